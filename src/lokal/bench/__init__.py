"""`lokal bench`: the comparison tables regenerated on your own hardware against any peer.

targets (who is measured) → scenarios (what is asked) → loadgen (closed-loop streaming clients)
→ metrics (percentiles) → run (interleaved measurement, one JSON document) → report / html / compare.
"""

SCHEMA_VERSION = "lokal-bench/1"
