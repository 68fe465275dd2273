"""Open WebUI 0.12.4 against a live lokal, through both of its connections, offline.

Installs ``open-webui==0.12.4`` into a venv of its own (large: ~2 GB; pip from PyPI), starts a
lokal with its automatic context (or uses ``--lokal-url``), then for each connection (Ollama,
OpenAI) starts Open WebUI with only that connection (``WEBUI_AUTH=False``, ``OFFLINE_MODE=True``,
``HF_HUB_OFFLINE=1``), signs in as its automatic admin, lists the models, and sends a chat the
way its UI does: a saved chat, a ``session_id`` (which makes Open WebUI attach its built-in tools,
the 36 of ../shared/fixtures/open-webui-0.12.4-chat-request.json) and the answer written back
into the chat by a background task, which the script polls. It also sends one plain API chat
(no session). Prints one JSON line per check and exits non-zero if any answer is empty.

    python benchmarks/open_webui_check.py                      # install if needed, run both
    python benchmarks/open_webui_check.py --lokal-url http://127.0.0.1:11435 --model smollm2:135m
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
VERSION = "0.12.4"
QUESTION = "What is the capital of France? Answer in one sentence."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} did not come up in {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


def ensure_venv(venv: Path) -> Path:
    """The venv's python with open-webui==VERSION installed (pip runs only when it is missing)."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", f"import importlib.metadata as m; assert m.version('open-webui') == '{VERSION}'"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"open-webui=={VERSION}"], check=True)
    return python


def start_lokal(home: Path, model: str, workdir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    log = workdir / "lokal.log"
    proc = subprocess.Popen([sys.executable, "-m", "lokal.cli.main", "serve", "--port", str(port), "--model", model,
                             "--parallel", "1", "--keep-alive", "-1"],
                            env={**os.environ, "LOKAL_HOME": str(home)}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/health", proc, log, 300)
    return url, proc


def start_open_webui(python: Path, connection: str, lokal: str, workdir: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    data = workdir / f"owui-{connection}"
    data.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DATA_DIR": str(data), "WEBUI_AUTH": "False", "OFFLINE_MODE": "True", "HF_HUB_OFFLINE": "1",
        "WEBUI_SECRET_KEY": "open-webui-check", "ENABLE_PERSISTENT_CONFIG": "False",
        "ENABLE_VERSION_UPDATE_CHECK": "False", "RAG_EMBEDDING_MODEL_AUTO_UPDATE": "False",
        "ENABLE_OLLAMA_API": str(connection == "ollama"), "OLLAMA_BASE_URL": lokal,
        "ENABLE_OPENAI_API": str(connection == "openai"), "OPENAI_API_BASE_URL": lokal + "/v1",
        "OPENAI_API_BASE_URLS": lokal + "/v1", "OPENAI_API_KEY": "unused", "OPENAI_API_KEYS": "unused",
        "SCARF_NO_ANALYTICS": "true", "DO_NOT_TRACK": "true", "ANONYMIZED_TELEMETRY": "false",
    }
    log = workdir / f"owui-{connection}.log"
    proc = subprocess.Popen([str(python.parent / "open-webui"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=data, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/health", proc, log, 900)
    return url, proc


def ui_chat(client: httpx.Client, model: dict[str, Any]) -> dict[str, Any]:
    """A chat as the web UI sends it: saved, with a session, answered by a background task."""
    user_id, answer_id = str(uuid.uuid4()), str(uuid.uuid4())
    now = int(time.time())
    user_msg = {"id": user_id, "parentId": None, "childrenIds": [answer_id], "role": "user", "content": QUESTION,
                "timestamp": now, "models": [model["id"]]}
    answer_msg = {"id": answer_id, "parentId": user_id, "childrenIds": [], "role": "assistant", "content": "",
                  "model": model["id"], "timestamp": now}
    chat = client.post("/api/v1/chats/new", json={"chat": {
        "title": "open_webui_check", "models": [model["id"]], "messages": [user_msg, answer_msg],
        "history": {"messages": {user_id: user_msg, answer_id: answer_msg}, "currentId": answer_id},
    }}).raise_for_status().json()
    body = {
        "stream": True, "model": model["id"], "messages": [{"role": "user", "content": QUESTION}],
        "params": {"max_tokens": 24, "num_predict": 24}, "tool_servers": [],
        "features": {"voice": False, "image_generation": False, "code_interpreter": False, "web_search": False},
        "variables": {}, "model_item": model, "session_id": f"check-{uuid.uuid4().hex[:12]}",
        "chat_id": chat["id"], "id": answer_id, "user_message": user_msg,
        "background_tasks": {"title_generation": False, "tags_generation": False, "follow_up_generation": False},
    }
    started = time.monotonic()
    r = client.post("/api/chat/completions", json=body)
    if r.status_code != 200:
        return {"ok": False, "status": r.status_code, "error": r.text[:500]}
    deadline = started + 900
    message: dict[str, Any] = {}
    while time.monotonic() < deadline:
        time.sleep(2)
        saved = client.get(f"/api/v1/chats/{chat['id']}").raise_for_status().json()
        message = saved["chat"]["history"]["messages"].get(answer_id, {})
        if message.get("done") or message.get("error"):
            break
    content = str(message.get("content") or "")
    return {"ok": bool(content.strip()) and not message.get("error"), "seconds": round(time.monotonic() - started, 1),
            "content": content[:300], "error": message.get("error")}


def api_chat(client: httpx.Client, model: dict[str, Any]) -> dict[str, Any]:
    """A chat through Open WebUI's own OpenAI-style API (no session: no built-in tools)."""
    started = time.monotonic()
    r = client.post("/api/chat/completions", json={
        "model": model["id"], "stream": False, "messages": [{"role": "user", "content": QUESTION}],
        "params": {"max_tokens": 24, "num_predict": 24}})
    if r.status_code != 200:
        return {"ok": False, "status": r.status_code, "error": r.text[:500]}
    content = str(r.json()["choices"][0]["message"].get("content") or "")
    return {"ok": bool(content.strip()), "seconds": round(time.monotonic() - started, 1), "content": content[:300]}


def check(python: Path, connection: str, lokal: str, model_name: str, workdir: Path) -> list[dict[str, Any]]:
    url, proc = start_open_webui(python, connection, lokal, workdir)
    try:
        with httpx.Client(base_url=url, timeout=900) as client:
            token = client.post("/api/v1/auths/signin", json={"email": "", "password": ""}).raise_for_status()
            client.headers["Authorization"] = f"Bearer {token.json()['token']}"
            models = client.get("/api/models").raise_for_status().json()["data"]
            model = next((m for m in models if m["id"] == model_name), None)
            if model is None:
                return [{"connection": connection, "check": "models", "ok": False,
                         "error": f"{model_name} not listed: {[m['id'] for m in models]}"}]
            return [{"connection": connection, "check": name, **fn(client, model)}
                    for name, fn in (("ui_chat", ui_chat), ("api_chat", api_chat))]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "lokal" / f"open-webui-{VERSION}")
    parser.add_argument("--lokal-url", help="a running lokal (default: start one with the automatic context)")
    parser.add_argument("--home", type=Path, default=REPO / ".test-home", help="LOKAL_HOME of the lokal started here")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--connections", default="ollama,openai")
    args = parser.parse_args()

    python = ensure_venv(args.venv)
    workdir = Path(tempfile.mkdtemp(prefix="open-webui-check-"))
    lokal_proc = None
    lokal = args.lokal_url
    if lokal is None:
        lokal, lokal_proc = start_lokal(args.home, args.model, workdir)
    failed = False
    try:
        for connection in args.connections.split(","):
            try:
                results = check(python, connection, lokal, args.model, workdir)
            except Exception as exc:  # one connection failing to start must not hide the other
                results = [{"connection": connection, "check": "start", "ok": False, "error": str(exc)[-2000:]}]
            for result in results:
                failed |= not result["ok"]
                print(json.dumps(result), flush=True)
    finally:
        if lokal_proc is not None:
            lokal_proc.terminate()
            lokal_proc.wait(timeout=60)
    print(json.dumps({"workdir": str(workdir), "ok": not failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
