"""Will it fit, what to run, what it costs: hardware facts, the memory estimate, cost and advice."""
