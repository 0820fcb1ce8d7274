"""The demo (app.py over smollm_trm/demo.py): what it reports, and the page in a real headless Chromium."""

import os
import shutil
import socket

import pytest

from conftest import EOS, PAD_ID, tiny_model, tiny_tokenizer
from smollm_trm.chat import make_template_think
from smollm_trm.demo import answer, build_demo

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}w10 {% endif %}"
)
# CI installs Debian's chromium and chromium-driver (.ci/run) and sets this, so that the browser test cannot skip there
BROWSER_REQUIRED = os.environ.get("SMOLLM_TRM_BROWSER_TESTS") == "1"


@pytest.fixture(scope="module")
def demo_model():
    model = tiny_model(n_supervision_steps=2)
    model.generation_config.update(pad_token_id=PAD_ID, eos_token_id=EOS)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    make_template_think(tokenizer)
    return model, tokenizer


def test_the_demo_answers_with_and_without_thoughts_and_shows_each_think(demo_model):
    model, tokenizer = demo_model
    reply = answer(model, tokenizer, "w20 w21 w22", n_cycles=3, n_supervision_steps=2)
    assert reply["seconds"] > 0 and reply["seconds_without_thoughts"] > 0
    first = reply["thinks"][0]
    assert len(first["tokens"]) == model.config.num_latents
    assert len(first["halt_probability"]) == first["supervision_steps"] == 2  # the halting head never fires here
    with model.watch_thoughts() as calls:  # the thoughts shown are the ones the answer was given
        model.generate(**tokenizer("<s> w20 w21 w22 </s> w10 <think>", return_tensors="pt", add_special_tokens=False),
                       max_new_tokens=1, do_sample=False, n_cycles=3, n_supervision_steps=2)
    decoded = [tokenizer.decode([t]) for t in model.thought_logits(calls[0].thoughts[0]).argmax(-1).tolist()]
    assert first["tokens"] == decoded
    with pytest.raises(ValueError, match="Ask a question"):
        answer(model, tokenizer, "  ", n_cycles=1, n_supervision_steps=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chromium_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        if BROWSER_REQUIRED:
            pytest.fail("SMOLLM_TRM_BROWSER_TESTS=1 but chromium / chromedriver are not installed")
        pytest.skip("no chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_demo_page_answers_and_shows_the_thoughts_in_a_real_browser(demo_model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    model, tokenizer = demo_model
    port = free_port()
    demo = build_demo(model, tokenizer, "tiny-test-model")
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    browser = chromium_driver()
    try:
        browser.get(f"http://127.0.0.1:{port}")
        wait = WebDriverWait(browser, 60)
        question = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#question textarea")))
        question.send_keys("w20 w21 w22")
        browser.find_element(By.CSS_SELECTOR, "#ask").click()
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#timing textarea").get_attribute("value"))
        timing = browser.find_element(By.CSS_SELECTOR, "#timing textarea").get_attribute("value")
        assert "s with thoughts" in timing and f"K = {model.config.num_latents}" in timing
        assert browser.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value") is not None
        table = browser.find_element(By.CSS_SELECTOR, "#thoughts").text
        assert "thoughts read as tokens" in table and "'w" in table, table[:500]  # a row of decoded thoughts
        browser.save_screenshot(str(tmp_path / "demo.png"))
        assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        browser.quit()
        demo.close()
