"""Secrets never leak (state, logs, errors, resources); principals cannot touch each other's sessions."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from fastmcp.exceptions import ToolError

from redraft.server.redaction import install, redact, secrets_of
from redraft.settings import load_settings
from tests.clients import PlainClient as Client
from tests.servers import HttpServer, server_env

API_KEY = "sk-test-SECRET-api-key-123"
TOKENS = {"tok-SECRET-alice-0001": "alice", "tok-SECRET-bob-0002": "bob"}


async def test_no_secret_in_state_logs_errors_or_resources(tmp_path, stub):
    db = str(tmp_path / "sec.sqlite")
    log_path = tmp_path / "server.log"
    env = server_env(
        db, stub.base_url, REDRAFT_API_KEY=API_KEY, REDRAFT_AUTH_TOKENS=json.dumps(TOKENS), REDRAFT_MAX_RETRIES="1"
    )
    env["REDRAFT_LOG_LEVEL"] = "DEBUG"
    server = HttpServer(env, log=log_path).start()
    seen: list[str] = []
    try:
        async with (
            Client(server.url, auth="tok-SECRET-alice-0001") as alice,
            Client(server.url, auth="tok-SECRET-bob-0002") as bob,
        ):
            sid = (await alice.call_tool("create_session", {})).structured_content["session_id"]
            r = await alice.call_tool("refine", {"session_id": sid, "query": "Keep secrets."})
            seen.append(json.dumps(r.structured_content))
            for uri in ("latest_critique", "penultimate_revision", "convergence", "run_log", "history"):
                seen.append((await alice.read_resource(f"redraft://sessions/{sid}/generic/{uri}"))[0].text)
            seen.append((await alice.read_resource("redraft://stats/generic"))[0].text)
            # errors: a model that rejects the key, a foreign session, a bad argument
            stub.fail({"status": 401}, {"status": 401})
            with pytest.raises(ToolError) as rejected:
                await alice.call_tool("draft", {"session_id": sid, "query": "Another."})
            seen.append(str(rejected.value))
            with pytest.raises(ToolError) as foreign:
                await bob.call_tool("status", {"session_id": sid})
            seen.append(str(foreign.value))
            with pytest.raises(ToolError) as bad:
                await alice.call_tool("draft", {"session_id": sid, "query": "q", "sampling": {"api_key": "x"}})
            seen.append(str(bad.value))
    finally:
        server.stop()
    assert "model_error" in seen[-3] and "invalid_session" in seen[-2]
    secrets = [API_KEY, *TOKENS]
    logs = log_path.read_text(errors="replace")
    assert "DEBUG" in logs  # the check below read a verbose log
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump())
    dump += "".join(str(row) for row in sqlite3.connect(db).execute("SELECT checkpoint, metadata FROM checkpoints"))
    for secret in secrets:
        assert secret not in logs, f"{secret} in server log"
        assert secret not in dump, f"{secret} in the database"
        for text in seen:
            assert secret not in text


async def test_principals_cannot_touch_each_others_threads(tmp_path, stub):
    env = server_env(str(tmp_path / "iso.sqlite"), stub.base_url, REDRAFT_AUTH_TOKENS=json.dumps(TOKENS))
    server = HttpServer(env).start()
    try:
        async with (
            Client(server.url, auth="tok-SECRET-alice-0001") as alice,
            Client(server.url, auth="tok-SECRET-bob-0002") as bob,
        ):
            sid = (await alice.call_tool("create_session", {})).structured_content["session_id"]
            await alice.call_tool("refine", {"session_id": sid, "query": "Alice only.", "max_loops": 2})
            page = (await alice.call_tool("history", {"session_id": sid})).structured_content
            cp = next(e for e in page["checkpoints"] if e["node"] == "critique")["checkpoint_id"]
            for tool, args in [
                ("history", {"session_id": sid}),
                ("state_at", {"session_id": sid, "checkpoint_id": cp}),
                ("fork", {"session_id": sid, "checkpoint_id": cp, "critique": "Bob was here."}),
                ("replay", {"session_id": sid, "checkpoint_id": cp}),
                ("diff", {"session_id": sid, "from_version": 0, "to_version": 1}),
                ("resume", {"session_id": sid}),
                ("end_session", {"session_id": sid}),
            ]:
                with pytest.raises(ToolError, match=r"^invalid_session: Invalid or unknown session\.$"):
                    await bob.call_tool(tool, args)
            with pytest.raises(Exception, match="invalid_session"):
                await bob.read_resource(f"redraft://sessions/{sid}/generic/history")
            after = (await alice.call_tool("history", {"session_id": sid})).structured_content
            assert after["checkpoints"] == page["checkpoints"]  # nothing Bob did left a trace
    finally:
        server.stop()


def test_redaction_filter_masks_every_configured_secret(caplog):
    import logging

    settings = load_settings(
        api_key=API_KEY, auth_tokens=TOKENS, database_url="postgresql://u:db-SECRET-pw@127.0.0.1/x"
    )
    assert set(secrets_of(settings)) == {API_KEY, *TOKENS, "db-SECRET-pw"}
    assert redact(f"key={API_KEY} url=postgresql://u:db-SECRET-pw@h", secrets_of(settings)).count("****") == 2
    previous = logging.getLogRecordFactory()
    try:
        install(settings)
        with caplog.at_level(logging.INFO):
            logging.getLogger("some.library").info("calling with %s and %s", API_KEY, "tok-SECRET-bob-0002")
            try:
                raise RuntimeError("connect failed: postgresql://u:db-SECRET-pw@host")
            except RuntimeError:
                logging.getLogger("other").exception("boom")
        assert "SECRET" not in caplog.text and caplog.text.count("****") >= 3
    finally:
        logging.setLogRecordFactory(previous)


async def test_jwt_auth_isolates_subjects(tmp_path, stub):
    from fastmcp.server.auth.providers.jwt import RSAKeyPair

    keys = RSAKeyPair.generate()
    issuer, audience = "https://issuer.example", "redraft"
    env = server_env(
        str(tmp_path / "jwt.sqlite"),
        stub.base_url,
        REDRAFT_JWT_PUBLIC_KEY=keys.public_key,
        REDRAFT_JWT_ISSUER=issuer,
        REDRAFT_JWT_AUDIENCE=audience,
    )
    carol = keys.create_token(subject="carol", issuer=issuer, audience=audience)
    dave = keys.create_token(subject="dave", issuer=issuer, audience=audience)
    wrong_audience = keys.create_token(subject="carol", issuer=issuer, audience="someone-else")
    server = HttpServer(env).start()
    try:
        async with Client(server.url, auth=carol) as c, Client(server.url, auth=dave) as d:
            sid = (await c.call_tool("create_session", {})).structured_content["session_id"]
            await c.call_tool("draft", {"session_id": sid, "query": "Carol's."})
            with pytest.raises(ToolError, match="invalid_session"):
                await d.call_tool("status", {"session_id": sid})
            assert (await c.call_tool("status", {"session_id": sid})).structured_content["phase"] == "ready_to_critique"
        async with httpx.AsyncClient() as raw:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
            headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
            for token in (wrong_audience, carol[:-4] + "AAAA"):  # wrong audience, forged signature
                response = await raw.post(
                    server.url, json=body, headers={**headers, "authorization": f"Bearer {token}"}
                )
                assert response.status_code == 401
    finally:
        server.stop()


def test_settings_and_connection_errors_never_print_a_secret(tmp_path):
    """Malformed settings and unreachable databases, through the real ``redraft`` command: one error line, exit
    code 3 (storage unavailable) or 2 (invalid settings), no traceback, and neither the password nor a token on
    stderr."""
    import subprocess

    from tests.servers import REDRAFT, free_port, server_env

    password, token = "db-SECRET-pw", "tok-SECRET-carol-0003"
    malformed = f"postgresql://u:{password}@[::1/db"  # psycopg quotes the whole URL in its error
    cases = [
        ({"REDRAFT_DATABASE_URL": malformed}, ["sessions"]),
        ({"REDRAFT_DATABASE_URL": malformed}, ["serve", "--transport", "http", "--port", str(free_port())]),
        ({}, ["history", "x", "--database-url", "postgresql://u:db SECRET pw@127.0.0.1:1/db"]),
        ({"REDRAFT_AUTH_TOKENS": f'{{"{token}": ', "REDRAFT_API_KEY": "sk-SECRET-key"}, ["serve"]),
        ({"REDRAFT_AUTH_TOKENS": f'["{token}"]', "REDRAFT_PORT": token}, ["config"]),
    ]
    exit_codes = [3, 3, 3, 2, 2]  # storage unavailable; invalid settings (usage), as `redraft --help` documents
    base = {**server_env("memory", "http://127.0.0.1:9/v1"), "REDRAFT_LOG_LEVEL": "DEBUG"}
    procs = [  # in parallel: each start-up costs seconds
        subprocess.Popen(
            [REDRAFT, *args], env={**base, **extra}, cwd=tmp_path, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        for extra, args in cases
    ]
    texts = []
    for (_, args), proc, code in zip(cases, procs, exit_codes, strict=True):
        text = proc.communicate(timeout=120)[1].decode(errors="replace")
        texts.append(text)
        assert proc.returncode == code, (args, text)
        for secret in (password, "db SECRET pw", token, "sk-SECRET-key"):
            assert secret not in text, (args, text)
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        if "http" not in args:  # uvicorn reports a failed start-up with its own traceback (redacted)
            assert "Traceback" not in text and len(errors) == 1, (args, text)
    assert 'Cannot connect to PostgreSQL ("postgresql://u:****@[::1/db")' in texts[0]
    assert "Invalid settings: REDRAFT_AUTH_TOKENS: not valid JSON" in texts[3]
    assert "REDRAFT_PORT: Input should be a valid integer" in texts[4] and "REDRAFT_AUTH_TOKENS: " in texts[4]
