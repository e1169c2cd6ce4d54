"""A replica of NVIDIA Chat with RTX / ChatRTX 0.3's Gradio UI, backed by fake_model.

Runs inside a replica venv (tests/replica/.venvs/<variant>-py3.X/), never in the project venv:
it imports gradio. What matters to a client is kept like the real ui/user_interface.py:

- the event graph: every chain starts with ``_validate_session`` (returns visibility
  updates, never raises) ``.then(_validate_session_and_raise)`` (raises
  ``gr.Error('Invalid session')``); the send chain is ``gr.on([textbox.submit,
  button.click], ...)`` ... ``process_input`` -> ``process_output`` (a generator over
  ``[chatbot, state]``) -> after-state, and sits behind the model/dataset chains, so its
  fn_index is not small and changes if the UI changes (here: 40, like one 0.2 capture);
- the ``_s_chat_`` cookie check, parsed the same fragile way;
- the per-session ``gr.State({})`` whose ``'session-id'`` is created on first use;
- cumulative streaming with a sleep per token, one job at a time (default queue);
- a random port in 1024-49000, optional https with a self-signed cert, and the printed
  launch line ``Open http(s)://127.0.0.1:PORT?cookie=UUID&__theme=dark in browser ...``.

Differences on purpose: the launch line is printed once the server listens (the real app
prints it from a thread before launch(); ``--print-early`` restores that), and
``process_output`` is an async generator so a ``[stall]`` job can be cancelled where Gradio
can cancel it (5.x ``/cancel``). Gradio 4.x's ``/reset`` only acts between yields, so on
4.x a stalled job holds the queue until the server dies, as a hung ChatRTX would.
``--standby`` (the launcher's warm restarts) imports and builds everything, then waits for a
line on stdin before it picks its port and listens.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import inspect
import ipaddress
import os
import random
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fake_model
import gradio as gr

LAUNCH_LINE = "Open {url} in browser to start Chat with RTX"
CERT_LINE = "Certificate: {path}"
# Exit status of a process ended by [die]; distinct from crashes and kills.
DIE_EXIT_CODE = 3
DEFAULT_TOKEN_DELAY = 0.05  # the real streaming loop sleeps 0.05 s per token

GRADIO_MAJOR = int(gr.__version__.split(".")[0])

MODELS = ["Llama 2 13B int4", "Mistral 7B int4", "ChatGLM 3 6B int4 (Supports Chinese)", "CLIP"]
DATASET_SOURCES = ["Folder Path", "AI model default"]
SAMPLE_QUESTIONS = [
    "What is DLSS 3.5?",
    "Which games support ray reconstruction?",
]
DEFAULT_DATASET_PATH = r"C:\Users\rtx\ChatRTX\dataset"


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A random free port in 1024-49000, chosen the way ChatRTX chooses it."""
    for _ in range(200):
        port = random.randint(1024, 49000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found in 1024-49000")


def make_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """Write servercert.pem/serverkey.pem for 127.0.0.1 and localhost into ``directory``.

    The cert doubles as its own CA (CA:TRUE, key identifiers), so a client can trust it
    with ``cafile=servercert.pem`` even under strict X.509 verification.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / "servercert.pem"
    key_path = directory / "serverkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _hidden(flag: bool) -> dict[str, Any]:
    return {"visible": not flag}


class ChatRTXReplica:
    """Builds the Blocks app; one instance per server, like ChatRTX's MainInterface."""

    def __init__(self, cookie: str, token_delay: float) -> None:
        self._secure_cookie = cookie
        self._token_delay = token_delay
        self._dataset_path = DEFAULT_DATASET_PATH

    # ---- session checks, kept as fragile as the original ---------------------------------

    def _validate_request(self, request: gr.Request) -> bool:
        # ChatRTX splits the Cookie header on "; " and each pair on "=" and unpacks two
        # values: a cookie without "=" or with "=" in its value makes the unpacking fail,
        # which counts as an invalid session even if _s_chat_ is right.
        headers = request.headers
        session_key = None
        if "cookie" in headers:
            cookies = headers["cookie"]
            if "_s_chat_=" in cookies:
                for pair in cookies.split("; "):
                    key, value = pair.split("=")
                    if key == "_s_chat_":
                        session_key = value
        if session_key is None or session_key != self._secure_cookie:
            raise PermissionError("session validation failed")
        return True

    def _validate_session(self, request: gr.Request) -> list[Any]:
        """Never raises: hides the UI and shows "Invalid session" when the cookie is wrong."""
        try:
            self._validate_request(request)
        except Exception:
            invalid = True
        else:
            invalid = False
        if not invalid:
            return [gr.update() for _ in self._validate_outputs]
        return [
            gr.update(visible=False),  # settings page
            gr.update(visible=False),  # model group
            gr.update(visible=False),  # dataset group
            gr.update(visible=False),  # chatbot
            gr.update(visible=False),  # query group
            gr.update(visible=False),  # reset
            gr.update(visible=False),  # retry
            gr.update(visible=True),  # post-shutdown group
            gr.update(visible=False),  # shutdown button
            gr.update(visible=False),  # undo
            gr.update(visible=False),  # disclaimer
            gr.update(visible=True),  # "Invalid session" markdown
            gr.update(visible=False),  # "memory released" markdown
            gr.update(visible=False),  # settings button
            gr.update(visible=False),  # sample questions
        ]

    def _validate_session_and_raise(self, request: gr.Request) -> None:
        try:
            self._validate_request(request)
        except Exception:
            raise gr.Error("Invalid session") from None

    @staticmethod
    def _get_session_id(state: Any) -> str | None:
        # The per-session gr.State({}) gets its id on first use; the model side keys chat
        # memory (chat-engine mode) and reset/undo callbacks by it.
        if isinstance(state, dict):
            if "session-id" not in state:
                state["session-id"] = str(uuid.uuid4())
            return state["session-id"]
        return None

    # ---- UI --------------------------------------------------------------------------

    def build(self) -> gr.Blocks:
        with gr.Blocks(title="ChatRTX", analytics_enabled=False) as demo:
            self._state = gr.State({})
            with gr.Row():
                gr.HTML("<h1>ChatRTX (replica)</h1>")
                self._settings_button = gr.Button("Settings", scale=0, elem_id="settings-btn")
                self._shutdown_button = gr.Button("Shut down", scale=0, elem_id="shutdown-btn")
            with gr.Group(visible=False) as self._post_shutdown_group:
                self._memory_released_md = gr.Markdown(
                    "Video memory released. Reopen ChatRTX from desktop to continue chatting."
                )
                self._invalid_session_md = gr.Markdown(
                    "Invalid session. Reopen ChatRTX from desktop to continue chatting."
                )
            with gr.Column(visible=False) as self._settings_page:
                gr.Markdown("Settings")
            with gr.Column():
                with gr.Row():
                    with gr.Group() as self._model_group:
                        gr.Markdown("<b>AI model</b>")
                        self._model_dropdown = gr.Dropdown(
                            MODELS, value=MODELS[1], container=False, filterable=False
                        )
                    with gr.Group() as self._dataset_group:
                        gr.Markdown("<b>Dataset</b>")
                        self._regenerate_button = gr.Button(
                            "Regenerate", scale=0, elem_id="dataset-regenerate-index-btn"
                        )
                        self._dataset_source_dropdown = gr.Dropdown(
                            DATASET_SOURCES, value=DATASET_SOURCES[0], show_label=False,
                            container=False, filterable=False,
                        )
                        with gr.Row():
                            self._dataset_textbox = gr.Textbox(
                                self._dataset_path, container=False, interactive=False,
                                max_lines=1,
                            )
                            self._edit_button = gr.Button(
                                "Edit", scale=0, elem_id="dataset-update-source-edit-button"
                            )
                with gr.Column() as self._sample_group:
                    self._sample_buttons = [gr.Button(q) for q in SAMPLE_QUESTIONS]
                chatbot_kwargs: dict[str, Any] = {"type": "tuples"} if GRADIO_MAJOR >= 5 else {}
                self._chatbot = gr.Chatbot(
                    show_label=False,
                    elem_id="main-chatbot-window",
                    sanitize_html=True,
                    **chatbot_kwargs,
                )
                with gr.Group() as self._query_group, gr.Row():
                    self._textbox = gr.Textbox(
                        placeholder="ChatRTX: Type or use voice", container=False,
                        elem_id="chat_text_area",
                    )
                    self._submit_button = gr.Button(
                        "SEND", variant="primary", scale=0, elem_id="submit_button"
                    )
                with gr.Row():
                    self._retry_button = gr.Button("Retry", scale=0, elem_id="chatbot-retry-button")
                    self._undo_button = gr.Button("Undo", scale=0, elem_id="chatbot-undo-button")
                    self._reset_button = gr.Button("Reset", scale=0, elem_id="chatbot-reset-button")
                self._disclaimer_md = gr.Markdown(
                    "ChatRTX response quality depends on the AI model's accuracy and the input "
                    "dataset. Please verify important information."
                )
            self._validate_outputs = [
                self._settings_page, self._model_group, self._dataset_group, self._chatbot,
                self._query_group, self._reset_button, self._retry_button,
                self._post_shutdown_group, self._shutdown_button, self._undo_button,
                self._disclaimer_md, self._invalid_session_md, self._memory_released_md,
                self._settings_button, self._sample_group,
            ]
            # Same declaration order as ChatRTX's _handle_events(): it fixes the fn_index.
            self._handle_load_events(demo)
            self._handle_shutdown_events()
            self._handle_settings_events()
            self._handle_model_events()
            self._handle_dataset_events()
            self._handle_chatbot_events()
            self._handle_links()
        self._demo = demo
        return demo

    def _guarded(self, trigger: Any) -> Any:
        """Every ChatRTX chain starts like this; the caller continues with .success()."""
        return trigger(self._validate_session, None, self._validate_outputs).then(
            self._validate_session_and_raise, None, None
        )

    # ---- element enable/disable around long operations ----------------------------------

    def _busy_elements(self) -> list[Any]:
        return [
            self._textbox, self._submit_button, self._retry_button, self._reset_button,
            self._model_dropdown, self._dataset_source_dropdown, self._edit_button,
            self._regenerate_button, self._settings_button, *self._sample_buttons,
            self._undo_button,
        ]

    def _set_busy(self, busy: bool, request: gr.Request) -> list[Any]:
        self._validate_session(request)
        return [gr.update(interactive=not busy) for _ in self._busy_elements()]

    def _before_state_when_response_processing(self, request: gr.Request) -> list[Any]:
        return self._set_busy(True, request)

    def _after_state_when_response_processing(self, request: gr.Request) -> list[Any]:
        return self._set_busy(False, request)

    def _show_hide_inputs(self) -> list[Any]:
        return [self._textbox, self._chatbot, self._dataset_source_dropdown,
                self._model_dropdown, self._state]

    def _show_hide_outputs(self) -> list[Any]:
        return [self._chatbot, self._sample_group, self._state]

    def _show_hide_sample_questions(
        self, query: str, history: list[Any], source: str, model: str, state: Any,
        request: gr.Request,
    ) -> list[Any]:
        self._validate_session(request)
        hide = bool(query) or bool(history) or source != DATASET_SOURCES[0]
        return [gr.update(value=history, visible=True), gr.update(**_hidden(hide)), state]

    # ---- event chains -----------------------------------------------------------------

    def _handle_load_events(self, demo: gr.Blocks) -> None:
        self._guarded(demo.load).success(
            self._show_hide_sample_questions, self._show_hide_inputs(), self._show_hide_outputs()
        )

    def _handle_shutdown_events(self) -> None:
        def before_shutdown(request: gr.Request) -> list[Any]:
            self._validate_session(request)
            return [gr.update(visible=False) for _ in self._validate_outputs]

        def handle_shutdown(state: Any, request: gr.Request) -> Any:
            self._validate_session(request)
            print("exiting", self._get_session_id(state), flush=True)
            # Like ChatRTX: leave from another thread so this response still goes out.
            threading.Timer(0.5, os._exit, (0,)).start()
            return state

        self._guarded(self._shutdown_button.click).success(
            before_shutdown, None, self._validate_outputs
        ).then(handle_shutdown, self._state, self._state)

    def _handle_settings_events(self) -> None:
        def check_for_setting_enablement(model: str, request: gr.Request) -> None:
            self._validate_session(request)
            if str(model).startswith("Downloading"):
                raise gr.Warning("AI model download in progress - Retry once done")

        def on_settings_clicked(request: gr.Request) -> Any:
            self._validate_session(request)
            return gr.update(visible=True)

        self._guarded(self._settings_button.click).success(
            check_for_setting_enablement, self._model_dropdown, None
        ).success(on_settings_clicked, None, self._settings_page)

    def _handle_model_events(self) -> None:
        def on_selection_change(model: str, state: Any, request: gr.Request) -> tuple[Any, Any]:
            self._validate_session(request)
            print("model changed to", model, self._get_session_id(state), flush=True)
            return model, state

        def update_dataset_picker(model: str, request: gr.Request) -> Any:
            self._validate_session(request)
            return gr.update(choices=DATASET_SOURCES)

        self._guarded(self._model_dropdown.input).success(
            self._before_state_when_response_processing, None, self._busy_elements()
        ).then(
            on_selection_change, [self._model_dropdown, self._state],
            [self._model_dropdown, self._state],
        ).then(
            update_dataset_picker, self._model_dropdown, self._dataset_source_dropdown
        ).then(
            self._after_state_when_response_processing, None, self._busy_elements(),
            show_progress=False,
        ).then(
            self._show_hide_sample_questions, self._show_hide_inputs(), self._show_hide_outputs()
        )

    def _handle_dataset_events(self) -> None:
        def select_folder(path: str, state: Any, request: gr.Request) -> tuple[str, Any]:
            # The real app opens a native folder picker here; a replica keeps the path.
            self._validate_session(request)
            return self._dataset_path, state

        def on_dataset_source_changed(source: str, state: Any, request: gr.Request) -> list[Any]:
            self._validate_session(request)
            print("dataset source", source, self._get_session_id(state), flush=True)
            folder = source == DATASET_SOURCES[0]
            return [gr.update(visible=folder), gr.update(visible=folder),
                    gr.update(visible=folder), state]

        def regenerate_index(state: Any, request: gr.Request) -> tuple[str, Any]:
            self._validate_session(request)
            print("on regenerate index", self._get_session_id(state), flush=True)
            return self._dataset_path, state

        busy = self._busy_elements()
        before, after = (self._before_state_when_response_processing,
                         self._after_state_when_response_processing)
        self._guarded(self._edit_button.click).success(before, None, busy).then(
            select_folder, [self._dataset_textbox, self._state],
            [self._dataset_textbox, self._state],
        ).then(after, None, busy, show_progress=False).then(
            self._show_hide_sample_questions, self._show_hide_inputs(),
            self._show_hide_outputs(), show_progress=False,
        )
        self._guarded(self._dataset_source_dropdown.change).success(
            before, None, busy, show_progress=False
        ).then(
            on_dataset_source_changed, [self._dataset_source_dropdown, self._state],
            [self._dataset_textbox, self._edit_button, self._regenerate_button, self._state],
            show_progress=False,
        ).then(after, None, busy, show_progress=False).then(
            self._show_hide_sample_questions, self._show_hide_inputs(),
            self._show_hide_outputs(), show_progress=False,
        )
        self._guarded(self._regenerate_button.click).success(before, None, busy).then(
            regenerate_index, self._state, [self._dataset_textbox, self._state]
        ).then(after, None, busy, show_progress=False)

    def process_input(
        self, query: str, history: list[list[str | None]], request: gr.Request
    ) -> tuple[str, list[list[str | None]]]:
        self._validate_session(request)
        if len(query) == 0:
            return "", history
        history.append([query, None])
        return "", history

    async def process_output(
        self, history: list[list[str | None]], state: Any, request: gr.Request
    ) -> AsyncIterator[tuple[list[list[str | None]], Any]]:
        # As in ChatRTX, the session check here only runs, it never stops anything.
        self._validate_session(request)
        if not history or history[-1][1] is not None:
            yield history, state
            return
        query = history[-1][0] or ""
        session_id = self._get_session_id(state)
        delay = fake_model.token_delay(query, self._token_delay)
        if fake_model.parse_directives(query).stale:
            # What a job that raised after "its half answer" leaves: the same history, then
            # the failed question (failed turns are not sent again as history).
            failed = [*(list(pair) for pair in history[:-1]),
                      ["a failed question", "its half answer"]]
            self._plant_stale_diff_state(request, [failed, state])
        try:
            # The model sees (query, history[:-1], session_id), cumulative text comes back.
            for text in self._query_handler(query, history[:-1], session_id):
                history[-1][1] = text
                yield history, state
                await asyncio.sleep(delay)
        except fake_model.ModelError as exc:
            raise gr.Error(str(exc)) from None
        except fake_model.StallRequested:
            print("stalling", session_id, flush=True)
            await asyncio.Event().wait()  # until the job is cancelled or the server dies
        except fake_model.DieRequested:
            print("dying mid-answer", session_id, flush=True)
            os._exit(DIE_EXIT_CODE)

    def _plant_stale_diff_state(self, request: gr.Request, stale: list[Any]) -> None:
        """What a generator that raised leaves in Gradio (sse_v2+): an entry in
        ``pending_diff_streams`` keyed by ``id(iterator)``. A new job whose iterator gets the
        same id then sees its first update sent as a diff against that stale value. Here
        the entry is planted under this very generator's id, so that happens every time.
        (For an async generator function Gradio's iterator is the generator object itself.)"""
        pending = getattr(self._demo, "pending_diff_streams", None)
        if pending is None:
            return  # sse_v1 sends whole values: nothing to go stale
        # Gradio may wrap the generator in one of its own (utils.function_wrapper): the ids
        # of every async generator on the way up are candidates, and the session hash is a
        # local of process_api further up (gr.Request does not carry it in every version).
        ids: list[int] = []
        session_hash: str | None = None
        frame = sys._getframe(1)  # process_output's frame
        while frame is not None and session_hash is None:
            ids += [id(g) for g in gc.get_referrers(frame)
                    if inspect.isasyncgen(g) and g.ag_frame is frame]
            found = frame.f_locals.get("session_hash")
            session_hash = found if isinstance(found, str) else None
            frame = frame.f_back
        for run in ids if session_hash is not None else []:
            pending[session_hash][run] = list(stale)

    @staticmethod
    def _query_handler(query: str, history: list[list[str | None]], session_id: str | None
                       ) -> Any:
        return fake_model.answer_stream(query, history)

    def _handle_chatbot_events(self) -> None:
        chat_io = [self._chatbot, self._state]
        busy = self._busy_elements()

        def process_undo_last_chat(history: list[Any], state: Any, request: gr.Request
                                   ) -> tuple[list[Any], Any]:
            self._validate_session(request)
            if history:
                history = history[:-1]
                print("undo", self._get_session_id(state), flush=True)
            return history, state

        def process_retry(history: list[Any], request: gr.Request) -> list[Any]:
            self._validate_session(request)
            if not history:
                return history
            last = history[-1]
            _, history = self.process_input(last[0] or "", history[:-1], request)
            return history

        def reset(state: Any, request: gr.Request) -> tuple[str, list[Any], Any]:
            self._validate_session(request)
            print("reset chat called", self._get_session_id(state), flush=True)
            return "", [], state

        def handle_sample_question_click(evt: gr.EventData, request: gr.Request) -> str:
            self._validate_session(request)
            return evt.target.value

        gr_on = gr.on  # the send chain: both triggers share one dependency
        self._guarded(
            lambda fn, inputs, outputs: gr_on(
                [self._textbox.submit, self._submit_button.click], fn, inputs, outputs
            )
        ).success(
            self._before_state_when_response_processing, None, busy
        ).success(
            self._show_hide_sample_questions, self._show_hide_inputs(), self._show_hide_outputs()
        ).then(
            self.process_input, [self._textbox, self._chatbot], [self._textbox, self._chatbot]
        ).then(
            self.process_output, chat_io, chat_io
        ).then(
            self._after_state_when_response_processing, None, busy, show_progress=False
        )

        self._guarded(self._retry_button.click).success(
            process_retry, self._chatbot, self._chatbot
        ).then(self.process_output, chat_io, chat_io)

        self._guarded(self._undo_button.click).success(
            process_undo_last_chat, chat_io, chat_io
        )
        self._guarded(self._reset_button.click).success(
            reset, self._state, [self._textbox, self._chatbot, self._state]
        )
        for button in self._sample_buttons:
            self._guarded(button.click).success(
                self._before_state_when_response_processing, None, busy
            ).then(handle_sample_question_click, None, self._textbox).then(
                self._show_hide_sample_questions, self._show_hide_inputs(),
                self._show_hide_outputs(),
            ).then(
                self.process_input, [self._textbox, self._chatbot],
                [self._textbox, self._chatbot],
            ).then(self.process_output, chat_io, chat_io).then(
                self._after_state_when_response_processing, None, busy, show_progress=False
            )

    def _handle_links(self) -> None:
        def open_local_link(local_path: str, request: gr.Request) -> None:
            # The real app opens Explorer on the file; nothing to open here.
            self._validate_session(request)

        file_path = gr.Textbox(visible=False)
        self._guarded(gr.Button(visible=False).click).success(
            open_local_link, file_path, None, api_name="open_local_link"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Chat with RTX replica (fake model).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: random 1024-49000")
    parser.add_argument("--https", action="store_true", help="serve TLS, self-signed cert")
    parser.add_argument("--cert-dir", default=None, help="where --https writes its cert")
    parser.add_argument("--token-delay", type=float, default=DEFAULT_TOKEN_DELAY)
    parser.add_argument("--cookie", default=None, help="default: a new uuid4")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="queue concurrency (default: Gradio's, 1 as in ChatRTX)")
    parser.add_argument("--print-early", action="store_true",
                        help="print the launch line before the server listens, like ChatRTX")
    parser.add_argument("--standby", action="store_true",
                        help="import and build, then listen only once a line arrives on stdin "
                        "(the launcher's warm restart)")
    args = parser.parse_args(argv)

    cookie = args.cookie or str(uuid.uuid4())
    ssl_kwargs: dict[str, Any] = {}
    if args.https:
        cert_dir = Path(args.cert_dir or tempfile.mkdtemp(prefix="chatrtx-replica-certs-"))
        cert, key = make_self_signed_cert(cert_dir)
        print(CERT_LINE.format(path=cert), flush=True)
        # gradio checks its own URL at startup; it must not reject our self-signed cert.
        ssl_kwargs = {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "ssl_verify": False}
    demo = ChatRTXReplica(cookie, args.token_delay).build()
    if args.concurrency is None:
        demo.queue()
    else:
        demo.queue(default_concurrency_limit=args.concurrency)
    if args.standby and not sys.stdin.readline():
        return  # the launcher is gone (stdin closed): never listen
    # The port is picked only now: a standby's predecessor held it until it was killed.
    port = args.port or pick_free_port(args.host)
    scheme = "https" if args.https else "http"
    launch_line = LAUNCH_LINE.format(url=f"{scheme}://127.0.0.1:{port}?cookie={cookie}&__theme=dark")
    if args.print_early:
        print(launch_line, flush=True)
    demo.launch(
        server_name=args.host,
        server_port=port,
        show_api=False,
        prevent_thread_lock=True,
        **ssl_kwargs,
    )
    if not args.print_early:
        print(launch_line, flush=True)
    demo.block_thread()


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # Gradio wraps every call in matplotlib's "agg" backend: left to pick its default backend,
    # matplotlib imports pyplot to find it, adding ~1 s to the first answer of every replica.
    os.environ.setdefault("MPLBACKEND", "agg")
    main()
