"""examples/desktop_app: drive the real chat window on Qt's offscreen platform."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from candle_agents import Engine, GenerationParams

# Qt reads the platform when the QApplication is made: no display needed.
os.environ["QT_QPA_PLATFORM"] = "offscreen"

# What PySide6's Qt libraries and the offscreen plugin link against (their ELF NEEDED
# entries beyond the wheel's own), plus a font so that text is drawn. A slim Debian
# image has none of them.
QT_SYSTEM_PACKAGES = [
    "libgl1",
    "libegl1",
    "libx11-6",
    "libxkbcommon0",
    "libglib2.0-0",
    "libfontconfig1",
    "libfreetype6",
    "libdbus-1-3",
    "fonts-dejavu-core",
]
# In a child process: a missing library fails the import, a broken plugin aborts.
QT_PROBE = (
    "from PySide6.QtGui import QFontDatabase\n"
    "from PySide6.QtWidgets import QApplication\n"
    "app = QApplication([])\n"
    "assert QFontDatabase.families(), 'no fonts found'\n"
)


def qt_problem() -> str | None:
    done = subprocess.run(
        [sys.executable, "-c", QT_PROBE], capture_output=True, text=True, timeout=120
    )
    return None if done.returncode == 0 else (done.stderr.strip()[-500:] or f"rc {done.returncode}")


@pytest.fixture(scope="session")
def qapp():
    """The QApplication, after installing Qt's system libraries with apt-get if missing."""
    problem = qt_problem()
    if problem is not None:
        if os.geteuid() != 0:
            pytest.skip(f"Qt cannot start ({problem}) and installing its libraries needs root")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update"],
            ["apt-get", "install", "-y", "--no-install-recommends", *QT_SYSTEM_PACKAGES],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
            if done.returncode != 0:
                pytest.skip(f"could not install Qt's libraries ({' '.join(cmd)}): {done.stderr}")
        problem = qt_problem()
        if problem is not None:
            pytest.skip(f"Qt cannot start even with {' '.join(QT_SYSTEM_PACKAGES)}: {problem}")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


@pytest.fixture(scope="module")
def engine():
    with Engine.from_pretrained(kv_cache_memory=64 * 2**20, max_model_len=1024) as eng:
        yield eng


@pytest.fixture()
def window(qapp, load_example, engine):
    desktop_app = load_example("desktop_app")
    win = desktop_app.ChatWindow(engine, max_tokens=24, temperature=0)
    win.show()
    yield win
    win.close()
    assert engine.wait_idle(10), "requests are still running after the test"
    assert engine.num_free_blocks == engine.num_blocks


def spin_until(condition, timeout: float) -> bool:
    """Run Qt's event loop, as app.exec() would, until ``condition()`` or ``timeout`` s.

    Not QSignalSpy.wait or QTest.qWait: in PySide6 6.12 they keep the GIL while they
    wait, which starves the engine's threads (QEventLoop.exec releases it).
    """
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    deadline = time.monotonic() + timeout
    check = QTimer(interval=10)
    check.timeout.connect(lambda: (condition() or time.monotonic() > deadline) and loop.quit())
    check.start()
    loop.exec()
    check.stop()
    return condition()


def send(window, text: str) -> list[str]:
    """Type ``text`` and click Send, as a user would; returns the reply's tokens as they come."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    QTest.keyClicks(window.input, text)
    QTest.mouseClick(window.send_button, Qt.MouseButton.LeftButton)
    assert window.generation is not None, "Send did not start a generation"
    tokens: list[str] = []
    # Tokens are queued to this thread: none can be missed before the event loop runs.
    window.generation.token.connect(tokens.append)
    return tokens


def test_reply_streams_into_the_window_without_freezing(window, tmp_path):
    from PySide6.QtCore import QTimer
    from PySide6.QtGui import QImage

    ticks: list[float] = []
    timer = QTimer(interval=20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start()
    finished: list[str] = []
    window.reply_finished.connect(finished.append)

    start = time.monotonic()
    tokens = send(window, "What is the capital of France?")
    assert not window.send_button.isEnabled() and window.stop_button.isEnabled()
    assert spin_until(lambda: finished, 30), "the reply did not finish within 30 s"
    end = time.monotonic()
    timer.stop()

    assert finished == ["stop"] or finished == ["length"]
    assert len(tokens) >= 3, "the reply arrived in one block instead of streaming"
    # The window's event loop ran all along: a 20 ms timer kept firing while the model
    # generated, never held up for long (generating on the GUI thread would stop it).
    during = [t for t in ticks if start <= t <= end]
    gaps = [b - a for a, b in zip([start, *during], [*during, end])]
    expected = (end - start) / 0.020
    assert len(during) >= max(3, expected / 3), f"{len(during)} ticks in {end - start:.2f} s"
    assert max(gaps) < 1.0, f"the event loop stalled for {max(gaps):.2f} s"

    answer = window.history[-1]
    assert answer["role"] == "assistant" and "Paris" in answer["content"]
    assert answer["content"] == "".join(tokens)
    assert answer["content"] in window.transcript.toPlainText()
    assert window.send_button.isEnabled() and not window.stop_button.isEnabled()

    shot = tmp_path / "chat.png"
    assert window.grab().save(str(shot))
    image = QImage(str(shot))
    assert image.width() >= 300 and image.height() >= 200
    colors = {image.pixel(x, y) for x in range(0, image.width(), 4) for y in range(0, 200, 2)}
    assert len(colors) > 4, "the screenshot is blank"
    assert shot.stat().st_size > 5_000


def test_stop_aborts_the_request(window, engine):
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    # A reply that would run for hundreds of tokens unless stopped.
    window.params = GenerationParams(max_tokens=500, temperature=0.7, ignore_eos=True)
    finished: list[str] = []
    window.reply_finished.connect(finished.append)
    tokens = send(window, "Tell me a long story about a dragon.")
    assert spin_until(lambda: len(tokens) >= 3, 30), "no tokens arrived within 30 s"
    QTest.mouseClick(window.stop_button, Qt.MouseButton.LeftButton)
    assert spin_until(lambda: finished, 10), "Stop did not end the reply"

    assert finished == ["abort"]
    assert len(tokens) < 500
    assert window.transcript.toPlainText().endswith("[stopped]")
    # The partial reply stays in the chat, as the user saw it.
    assert window.history[-1] == {"role": "assistant", "content": "".join(tokens)}
    assert window.send_button.isEnabled() and not window.stop_button.isEnabled()
    # The engine dropped the request and gave back every KV block.
    assert engine.wait_idle(10)
    assert engine.num_free_blocks == engine.num_blocks
