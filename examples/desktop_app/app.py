"""A desktop chat window over an engine that runs in this process (PySide6).

    python examples/desktop_app/app.py [--model PATH]

The model generates in a worker thread and its tokens reach the window through Qt
signals, so the window stays responsive; Stop aborts the request in the engine.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import uuid
from typing import Any

from PySide6.QtCore import QThread, Signal
from PySide6.QtGui import QCloseEvent, QFont, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from candle_agents import CandleError, Engine, GenerationParams


class Generation(QThread):
    """Streams one reply from the engine in its own thread.

    Signals emitted here are queued to the window's (GUI) thread, which is the
    only thread allowed to touch widgets.
    """

    token = Signal(str)  # a piece of the reply
    done = Signal(str)  # the finish reason: stop, length, abort, or error

    def __init__(self, engine: Engine, prompt: str, params: GenerationParams) -> None:
        super().__init__()
        self.engine = engine
        self.prompt = prompt
        self.params = params
        self.request_id = f"desktop-{uuid.uuid4().hex[:12]}"  # ours, so Stop can name it

    def run(self) -> None:
        reason = "abort"  # unless the engine reports another
        try:
            stream = self.engine.stream_sync(self.prompt, self.params, request_id=self.request_id)
            with contextlib.closing(stream):  # leaving the stream early aborts the request
                for delta in stream:
                    if self.isInterruptionRequested():
                        break  # Stop came before the engine knew the request
                    if delta.text:
                        self.token.emit(delta.text)
                    if delta.finished:
                        reason = delta.finish_reason
        except CandleError as exc:  # e.g. a chat longer than the model's context
            self.token.emit(f"[error: {exc}]")
            reason = "error"
        self.done.emit(reason)

    def stop(self) -> None:
        """Callable from the GUI thread: abort() only posts a message to the engine loop."""
        self.requestInterruption()
        self.engine.abort(self.request_id)


class ChatWindow(QWidget):
    reply_finished = Signal(str)  # the finish reason of each reply, for embedders and tests

    def __init__(self, engine: Engine, max_tokens: int = 512, temperature: float = 0.7) -> None:
        super().__init__()
        self.engine = engine
        self.params = GenerationParams(max_tokens=max_tokens, temperature=temperature)
        self.history: list[dict[str, Any]] = []  # the whole chat, sent again every turn
        self.generation: Generation | None = None
        self._reply: list[str] = []

        self.setWindowTitle(f"candle-agents chat: {engine.model_name}")
        self.resize(640, 480)
        self.transcript = QTextEdit(readOnly=True)
        self.input = QLineEdit(placeholderText="Ask something and press Enter")
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop", enabled=False)

        row = QHBoxLayout()
        row.addWidget(self.input)
        row.addWidget(self.send_button)
        row.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.transcript)
        layout.addLayout(row)

        self.input.returnPressed.connect(self.send)
        self.send_button.clicked.connect(self.send)
        self.stop_button.clicked.connect(self.stop)

    def send(self) -> None:
        text = self.input.text().strip()
        if not text or self.generation is not None:
            return
        self.input.clear()
        self.history.append({"role": "user", "content": text})
        self._append("You", text)
        self._append("Assistant", "")
        self._reply = []
        # The model's own chat template turns the history into one prompt string.
        prompt = self.engine.apply_chat_template(self.history)
        self.generation = Generation(self.engine, prompt, self.params)
        self.generation.token.connect(self._on_token)
        self.generation.done.connect(self._on_finished)
        self._set_busy(True)
        self.generation.start()

    def stop(self) -> None:
        if self.generation is not None:
            self.generation.stop()

    def _on_token(self, text: str) -> None:
        self._reply.append(text)
        cursor = self.transcript.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text, QTextCharFormat())  # plain text: model output is not HTML
        self.transcript.ensureCursorVisible()

    def _on_finished(self, reason: str) -> None:
        if reason == "abort":
            self._append_note("[stopped]")
        # Keep even a stopped reply: the history is what the user saw.
        self.history.append({"role": "assistant", "content": "".join(self._reply)})
        # run() is returning: join the thread before the QThread object is dropped.
        self.generation.wait()
        self.generation = None
        self._set_busy(False)
        self.reply_finished.emit(reason)

    def _append(self, speaker: str, text: str) -> None:
        cursor = self.transcript.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        if not self.transcript.document().isEmpty():
            cursor.insertBlock()
        bold = QTextCharFormat()
        bold.setFontWeight(QFont.Weight.Bold)
        cursor.insertText(f"{speaker}: ", bold)
        cursor.insertText(text, QTextCharFormat())
        self.transcript.setTextCursor(cursor)

    def _append_note(self, note: str) -> None:
        cursor = self.transcript.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        italic = QTextCharFormat()
        italic.setFontItalic(True)
        cursor.insertText(f" {note}", italic)

    def _set_busy(self, busy: bool) -> None:
        self.send_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)

    def closeEvent(self, event: QCloseEvent) -> None:  # Qt calls it when the window closes
        if self.generation is not None:  # don't leave a thread running into a closed engine
            self.generation.stop()
            self.generation.wait()
        super().closeEvent(event)


def main() -> int:
    parser = argparse.ArgumentParser(description="A desktop chat window on a local model.")
    parser.add_argument("--model", help="an HF folder or .gguf file (default: SmolLM2-135M)")
    args = parser.parse_args()
    app = QApplication(sys.argv)
    print("loading the model...", file=sys.stderr)
    with Engine.from_pretrained(args.model) as engine:
        window = ChatWindow(engine)
        window.show()
        return app.exec()


if __name__ == "__main__":
    sys.exit(main())
