import time

from nas.progress import progress


def test_a_bar_on_a_log_writes_its_first_and_last_state_not_every_redraw(capsys):
    with progress(200, "demo", "step") as bar:  # stderr is captured: not a terminal
        for step in range(200):
            time.sleep(0.005)
            bar.set_postfix(step=step)
            bar.update(1)
    frames = [f for f in capsys.readouterr().err.replace("\r", "\n").splitlines() if f.startswith("demo")]
    assert 1 <= len(frames) <= 3 and "200/200" in frames[-1] and "step=199" in frames[-1], frames
