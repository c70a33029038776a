"""`make console-screenshots`: the README's pictures of the operator console (docs/img/
console.png, console-entries.png), taken by headless Chromium against a real stack (the
exported model, a fake upstream that reports usage, CACHE_PRICES) while QQP questions and
their paraphrases flow through `/query`."""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from pathlib import Path

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from bench.qqp import QuestionPair, load_pairs
from bench.stack import local_stack
from tests.browser import browser_log, chromium, errors_in
from tests.fake_llm import FakeLLM

PRICES = {"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}}  # per million tokens


def _usage(prompt: str, answer: str) -> dict[str, int]:
    """Tokens as a chat application spends them: a system prompt and a few hundred words."""
    prompt_tokens, completion_tokens = 180 + 2 * len(prompt.split()), 260 + len(answer) % 140
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _traffic(url: str, pairs: list[QuestionPair], stop: threading.Event, seed: int = 0) -> None:
    """About three requests a second: new questions, their paraphrases, repeats; a few
    answers stored by Set (no cost known)."""
    rng = random.Random(seed)
    asked: list[QuestionPair] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i, pair in enumerate(pairs):
            if stop.is_set():
                return
            if i % 9 == 4:
                client.post(
                    "/v1/caches/default/entries",
                    json={"prompt": pair.text_a, "response": f"A stored answer to: {pair.text_a}"},
                )
            else:
                client.post("/query", json={"query": pair.text_a})
            asked.append(pair)
            for _ in range(rng.choice((1, 2, 3))):
                if stop.is_set():
                    return
                again = rng.choice(asked[-12:])
                question = again.text_b if rng.random() < 0.7 else again.text_a
                client.post("/query", json={"query": question})
                stop.wait(0.25)


def take(model_dir: Path, output: Path, seconds: float) -> list[Path]:
    pairs = [p for p in load_pairs(3000) if p.duplicate][:400]
    llm = FakeLLM(delay_s=0.8, answer=lambda q: f"Here is what to know about: {q}")
    llm.usage_of = _usage
    output.mkdir(parents=True, exist_ok=True)
    with (
        llm,
        local_stack(
            model_dir, "--upstream-base-url", llm.base_url, "--prices", json.dumps(PRICES)
        ) as stack,
        tempfile.TemporaryDirectory() as profile,
    ):
        assert stack.gateway is not None
        url = stack.gateway.url
        stop = threading.Event()
        worker = threading.Thread(target=_traffic, args=(url, pairs, stop), daemon=True)
        worker.start()
        driver = chromium(Path(profile), 1400, 1000)
        try:
            driver.get(f"{url}/console#cache=default")
            time.sleep(seconds)  # the charts fill as the page polls every 2 s
            wait = WebDriverWait(driver, 20)
            hit = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.decision.hit"))[0]
            hit.find_element(By.CSS_SELECTOR, "button.wrong").click()
            wait.until(lambda d: "reported wrong" in hit.text)
            time.sleep(4.5)  # two more polls under traffic: the feedback tile counts it
            shots = [output / "console.png", output / "console-entries.png"]
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(shots[0]))
            stop.set()
            worker.join(30)
            # The cache browser: the entries nearest a question, whatever their similarity.
            driver.find_element(By.ID, "search-prompt").send_keys(pairs[1].text_b)
            driver.find_element(By.ID, "search-threshold").send_keys("0")
            driver.find_element(By.ID, "search-max").clear()
            driver.find_element(By.ID, "search-max").send_keys("4")
            driver.find_element(By.CSS_SELECTOR, "#search-form button").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results tbody tr"))
            driver.find_element(By.ID, "flush-start").click()
            panel = driver.find_element(By.ID, "entries-panel")
            driver.execute_script("arguments[0].scrollIntoView()", panel)
            driver.save_screenshot(str(shots[1]))
            errors = errors_in(browser_log(driver))
            if errors:
                raise SystemExit("the console logged errors:\n" + "\n".join(errors))
            return shots
        finally:
            stop.set()
            driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--output", type=Path, default=Path("docs/img"))
    parser.add_argument("--seconds", type=float, default=50.0, help="traffic before the shots")
    args = parser.parse_args()
    for shot in take(args.model_dir, args.output, args.seconds):
        print(f"wrote {shot}")


if __name__ == "__main__":
    main()
