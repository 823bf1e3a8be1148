"""A fake Anthropic Messages API on 127.0.0.1, for the real `anthropic` SDK to talk real HTTP to.

    with FakeAnthropic(api_key=KEY) as srv:
        srv.script("Plan a trip", Fault.rate_limit(retry_after="0"), Fault.six_questions())
        client = anthropic.Anthropic(api_key=KEY, base_url=srv.base_url, max_retries=0)
        ...
        assert len(srv.message_requests()) == 3

It speaks the wire format: POST /v1/messages answers with `tool_use` content blocks, usage
(including the prompt-cache fields), a `request-id` header and a `stop_reason`; errors are
`{"type":"error","error":{"type":...,"message":...}}` bodies; the Message Batches endpoints
(create, retrieve, results as JSONL) work on the same responders. Like the real API it rejects
a request whose tool_use turn is not answered by a tool_result.

Responders: a function `(body) -> tool input dict | full message dict | Fault | None` (None means
"use the default"), either one for every request (`responder=`) or per forced tool name
(`responders={"record_verdict": fn}`). The defaults answer record_discovery with a valid,
deterministic answer derived from the task input and record_verdict with a tie.

Faults are scripted per matching request (`match` is a substring of the conversation's text or
a predicate on the request body) and consumed in order; `times=None` makes one permanent.
Every request is logged (`srv.requests`) with the credential headers redacted; whether the
expected key was sent is recorded as `credential_ok`.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from .anthropic_responders import (  # noqa: F401  (re-exported for tests)
    DEFAULT_RESPONDERS, Fault, default_discovery, default_verdict, forced_tool, judge_sets,
    message_text, task_input,
)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict            # lower-case names; credential headers redacted
    body: Any
    credential_ok: bool      # the expected key arrived (x-api-key or Authorization: Bearer)
    status: int = 0          # what the fake answered
    fault: str = ""          # the fault applied, if any


@dataclass
class _Script:
    match: Any
    faults: list


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeAnthropic:
    def __init__(self, *, api_key: str | None = None, responder: Callable | None = None,
                 responders: dict[str, Callable] | None = None,
                 faults: list[tuple[Any, Any]] | None = None, latency: float = 0.0,
                 batch_polls_before_end: int = 1, hold_batches: bool = False):
        self.api_key = api_key
        self.responder = responder
        self.responders = {**DEFAULT_RESPONDERS, **(responders or {})}
        self.latency = latency
        self.batch_polls_before_end = batch_polls_before_end
        self.hold_batches = hold_batches   # True: batches stay in_progress until released
        # Messages past the first `answer_limit` are held open until release_held(): a test can
        # then act on a client that is provably mid-run, however loaded the machine is.
        self.answer_limit: int | None = None
        self._answered = 0
        self.held = 0                      # requests waiting right now
        self._gate = threading.Event()
        self._closing = False
        self._lock = threading.Lock()
        self._scripts: list[_Script] = []
        self._requests: list[RecordedRequest] = []
        self._batches: dict[str, dict] = {}
        self._seen_prefixes: set[str] = set()
        self._counter = 0
        for match, fs in faults or []:
            self.script(match, *(fs if isinstance(fs, (list, tuple)) else [fs]))
        self._server: ThreadingHTTPServer | None = None

    # ---- lifecycle ----
    def __enter__(self) -> "FakeAnthropic":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                fake._handle(self, "POST")

            def do_GET(self):
                fake._handle(self, "GET")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._closing = True
        self.release_held()
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---- scripting and inspection ----
    def script(self, match, *faults: Fault) -> None:
        """Apply `faults` in order to the requests matching `match` (text substring/predicate)."""
        with self._lock:
            self._scripts.append(_Script(match, [Fault(**{**f.__dict__}) for f in faults]))

    def release_batches(self) -> None:
        self.hold_batches = False

    def release_held(self) -> None:
        """Answer the requests held right now; later ones past the limit are held in turn."""
        with self._lock:
            gate, self._gate = self._gate, threading.Event()
        gate.set()

    def lift_answer_limit(self) -> None:
        with self._lock:
            self.answer_limit = None
        self.release_held()

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def message_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/messages"]

    def reset_log(self) -> None:
        with self._lock:
            self._requests.clear()

    # ---- request handling ----
    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._counter += 1
            return f"{prefix}_fake_{self._counter:06d}"

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in h.headers.items()}
        credential = headers.get("x-api-key") or re.sub(r"^Bearer\s+", "",
                                                          headers.get("authorization", ""))
        for k in ("x-api-key", "authorization"):
            if k in headers:
                headers[k] = "<redacted>"
        rec = RecordedRequest(method, h.path, headers, body,
                              credential_ok=bool(credential) and credential == self.api_key)
        with self._lock:
            self._requests.append(rec)
        if self.api_key is not None and not rec.credential_ok:
            return self._send_error(h, rec, 401, "authentication_error", "invalid x-api-key")
        path = h.path.split("?")[0]
        if method == "POST" and path == "/v1/messages":
            return self._messages(h, rec, body, credential)
        if method == "POST" and path == "/v1/messages/batches":
            return self._batch_create(h, rec, body, credential)
        m = re.fullmatch(r"/v1/messages/batches/([\w-]+)(/results)?", path)
        if method == "GET" and m:
            return self._batch_get(h, rec, m.group(1), bool(m.group(2)))
        self._send_error(h, rec, 404, "not_found_error", f"no route {method} {path}")

    def _send(self, h, rec, status: int, payload, headers: dict | None = None,
              content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        rec.status = status
        try:
            h.send_response(status)
            h.send_header("content-type", content_type)
            h.send_header("content-length", str(len(data)))
            rid = payload.get("request_id") if isinstance(payload, dict) else None
            h.send_header("request-id", rid or self._next_id("req"))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout fault) — exactly what was being tested

    def _error_body(self, error_type: str, message: str) -> dict:
        return {"type": "error", "error": {"type": error_type, "message": message},
                "request_id": self._next_id("req")}

    def _send_error(self, h, rec, status, error_type, message, headers=None):
        self._send(h, rec, status, self._error_body(error_type, message), headers)

    def _take_fault(self, body: dict) -> Fault | None:
        text = message_text(body)
        with self._lock:
            for s in self._scripts:
                if not s.faults:
                    continue
                m = s.match
                hit = m is None or (m in text if isinstance(m, str) else bool(m(body)))
                if not hit:
                    continue
                f = s.faults[0]
                if f.times is not None:
                    f.times -= 1
                    if f.times <= 0:
                        s.faults.pop(0)
                return f
        return None

    def _validate(self, body) -> str | None:
        """The subset of the real API's request validation our callers can get wrong."""
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        for key in ("model", "max_tokens", "messages"):
            if key not in body:
                return f"{key}: Field required"
        if "temperature" in body and not isinstance(body["temperature"], (int, float)):
            return "temperature: must be a number"
        msgs = body["messages"]
        if not msgs or msgs[0].get("role") != "user":
            return "messages: first message must use the user role"
        for i, m in enumerate(msgs):
            if i and m.get("role") == msgs[i - 1].get("role"):
                return f"messages.{i}: roles must alternate between user and assistant"
            content = m.get("content")
            if m.get("role") == "assistant" and isinstance(content, list):
                uses = [b["id"] for b in content if b.get("type") == "tool_use"]
                nxt = msgs[i + 1].get("content") if i + 1 < len(msgs) else None
                results = [b.get("tool_use_id") for b in nxt or [] if isinstance(b, dict)
                           and b.get("type") == "tool_result"] if isinstance(nxt, list) else []
                if uses and sorted(uses) != sorted(results):
                    return (f"messages.{i + 1}: `tool_use` ids were found without `tool_result` "
                            f"blocks immediately after: {', '.join(uses)}")
        name = forced_tool(body)
        if body.get("tool_choice") and name not in [t.get("name") for t in body.get("tools", [])]:
            return f"tool_choice: tool {name!r} not found in tools"
        return None

    def _answer(self, body: dict, credential: str, *, in_batch: bool = False):
        """(status, payload, headers, fault name) for one messages request."""
        problem = self._validate(body)
        if problem:
            return 400, self._error_body("invalid_request_error", problem), {}, "invalid"
        fault = self._take_fault(body)
        if fault and fault.kind == "http":
            msg = fault.message.replace("{credential}", credential)
            return fault.status, self._error_body(fault.error_type, msg), fault.headers, \
                f"http {fault.status}"
        if fault and fault.kind == "slow" and not in_batch:
            time.sleep(fault.delay)
        name = forced_tool(body)
        responder = self.responder or self.responders.get(name)
        answer = responder(body) if responder else None
        if isinstance(answer, Fault):   # a responder may decide on a fault itself
            fault, answer = answer, None
            if fault.kind == "http":
                return fault.status, self._error_body(fault.error_type, fault.message), \
                    fault.headers, f"http {fault.status}"
        if answer is None:
            answer = DEFAULT_RESPONDERS[name](body) if name in DEFAULT_RESPONDERS else {}
        if isinstance(answer, dict) and answer.get("type") == "message":
            return 200, answer, {}, fault.kind if fault else ""
        if fault and fault.mutate:
            answer = fault.mutate(answer)
        stop_reason, content_kind = "tool_use", "tool"
        if fault and fault.kind == "message":
            stop_reason, content_kind = fault.stop_reason, fault.content
        return 200, self._message(body, name, answer, stop_reason, content_kind), {}, \
            (fault.kind + (":" + fault.stop_reason if fault.kind == "message" else "")) if fault else ""

    def _message(self, body, tool_name, tool_input, stop_reason, content_kind) -> dict:
        prefix = json.dumps([body.get("tools"), body.get("system")], sort_keys=True)
        cached = "cache_control" in prefix
        prefix_tokens = len(prefix) // 4
        key = hashlib.sha256(prefix.encode()).hexdigest()
        with self._lock:
            seen = key in self._seen_prefixes
            self._seen_prefixes.add(key)
        usage = {"input_tokens": len(json.dumps(body.get("messages"))) // 4
                 + (0 if cached else prefix_tokens),
                 "output_tokens": len(json.dumps(tool_input)) // 4 + 1,
                 "cache_creation_input_tokens": prefix_tokens if cached and not seen else 0,
                 "cache_read_input_tokens": prefix_tokens if cached and seen else 0,
                 "service_tier": "standard"}
        content: list[dict] = []
        if content_kind == "tool":
            content = [{"type": "tool_use", "id": self._next_id("toolu"), "name": tool_name,
                        "input": tool_input}]
        elif content_kind == "text":
            content = [{"type": "text", "text": "Here are some questions you could consider."}]
        msg = {"id": self._next_id("msg"), "type": "message", "role": "assistant",
               "model": body.get("model"), "content": content, "stop_reason": stop_reason,
               "stop_sequence": None, "usage": usage}
        if stop_reason == "refusal":
            msg["stop_details"] = {"type": "refusal", "category": None,
                                   "explanation": "The fake declined this request."}
        return msg

    def _messages(self, h, rec, body, credential) -> None:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self._answered += 1
            hold = (self.answer_limit is not None and self._answered > self.answer_limit
                    and not self._closing)
            self.held += hold
            gate = self._gate
        if hold:
            gate.wait()
            with self._lock:
                self.held -= 1
        status, payload, headers, fault = self._answer(body, credential)
        rec.fault = fault
        self._send(h, rec, status, payload, headers)

    # ---- Message Batches ----
    def _batch_object(self, bid: str) -> dict:
        b = self._batches[bid]
        ended = b["ended"]
        counts = {"processing": 0 if ended else len(b["results"]), "succeeded": 0, "errored": 0,
                  "canceled": 0, "expired": 0}
        if ended:
            for r in b["results"]:
                counts[r["result"]["type"]] += 1
        return {"id": bid, "type": "message_batch",
                "processing_status": "ended" if ended else "in_progress",
                "request_counts": counts, "created_at": b["created_at"],
                "expires_at": b["expires_at"], "ended_at": b["ended_at"], "archived_at": None,
                "cancel_initiated_at": None,
                "results_url": f"{self.base_url}/v1/messages/batches/{bid}/results" if ended
                else None}

    def _batch_create(self, h, rec, body, credential) -> None:
        reqs = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(reqs, list) or not reqs:
            return self._send_error(h, rec, 400, "invalid_request_error", "requests: required")
        ids = [r.get("custom_id") for r in reqs]
        bad = [c for c in ids if not isinstance(c, str) or not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", c)]
        if bad or len(set(ids)) != len(ids):
            return self._send_error(h, rec, 400, "invalid_request_error",
                                    f"custom_id must be unique and match ^[a-zA-Z0-9_-]{{1,64}}$: {bad[:3]}")
        results = []
        for r in reqs:
            status, payload, _hdr, _fault = self._answer(r.get("params") or {}, credential,
                                                         in_batch=True)
            result = ({"type": "succeeded", "message": payload} if status == 200
                      else {"type": "errored", "error": payload})
            results.append({"custom_id": r["custom_id"], "result": result})
        now = datetime.now(timezone.utc)
        bid = self._next_id("msgbatch")
        with self._lock:
            self._batches[bid] = {"requests": reqs, "results": results, "polls": 0,
                                  "ended": False, "created_at": _iso(now),
                                  "expires_at": _iso(now + timedelta(hours=24)), "ended_at": None}
        self._send(h, rec, 200, self._batch_object(bid))

    def _batch_get(self, h, rec, bid: str, results: bool) -> None:
        b = self._batches.get(bid)
        if b is None:
            return self._send_error(h, rec, 404, "not_found_error", f"batch {bid} not found")
        if results:
            if not b["ended"]:
                return self._send_error(h, rec, 400, "invalid_request_error",
                                        f"batch {bid} is still in progress")
            data = "".join(json.dumps(r) + "\n" for r in reversed(b["results"]))  # any order
            return self._send(h, rec, 200, data.encode(), content_type="application/binary")
        with self._lock:
            b["polls"] += 1
            if not b["ended"] and not self.hold_batches \
                    and b["polls"] >= self.batch_polls_before_end:
                b["ended"], b["ended_at"] = True, _iso(datetime.now(timezone.utc))
        self._send(h, rec, 200, self._batch_object(bid))

    def batch_requests(self, bid: str | None = None) -> list[dict]:
        """The requests submitted in batches (all of them, or one batch's)."""
        with self._lock:
            return [r for k, b in self._batches.items() if bid in (None, k) for r in b["requests"]]
