#!/usr/bin/env python3
"""Drive sluice's status page in headless Chromium (selenium + chromedriver), for sluice's tests.

  status_page.py --url http://127.0.0.1:PORT --token TOKEN --held N --screenshot FILE.png
                 --user-data-dir DIR [--chromium /usr/bin/chromium] [--chromedriver /usr/bin/chromedriver]

Steps, each checked: / without the cookie is a login form; signing in with the token (a GET to /login)
shows the page; the page shows the held route (its reason names AADSTS7000215) and N messages held in
the queue; a screenshot is saved; Release is clicked; the page comes back with no route held.

Prints one line per step; exit status 1 with the reason on stderr when a check fails. The machine's
network is closed: Chromium is started with everything that would call home turned off.
"""

import argparse
import os
import sys
import time

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

DEADLINE = 60.0


def fail(message):
    sys.stderr.write("status_page.py: {}\n".format(message))
    sys.exit(1)


def wait_for(driver, what, check):
    """Polls `check(driver)` (reloading between tries) until it returns a true value."""
    end = time.monotonic() + DEADLINE
    while True:
        try:
            value = check(driver)
            if value:
                return value
        except NoSuchElementException:
            pass
        if time.monotonic() > end:
            fail("timed out waiting for {}; page was:\n{}".format(what, driver.page_source))
        time.sleep(0.3)
        driver.refresh()


def text_of(driver, element_id):
    return driver.find_element(By.ID, element_id).text.strip()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--held", type=int, required=True)
    p.add_argument("--screenshot", required=True)
    p.add_argument("--user-data-dir", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = p.parse_args()

    # Never let selenium look for (download) a driver: ours is given.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1100",
        "--user-data-dir=" + args.user_data_dir,
    ):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=args.chromedriver), options=options)
    except WebDriverException as e:
        fail("cannot start Chromium through chromedriver: {}".format(e.msg))
    try:
        driver.set_page_load_timeout(DEADLINE)
        base = args.url.rstrip("/")

        # Without the cookie: the login form, and nothing of the relay's state.
        driver.get(base + "/")
        token_field = driver.find_element(By.ID, "token")
        if "held-route" in driver.page_source or "queue-total" in driver.page_source:
            fail("the page shows the relay's state without the token")
        print("login form shown")

        token_field.send_keys(args.token)
        driver.find_element(By.ID, "sign-in").click()
        wait_for(driver, "the status page after signing in", lambda d: d.find_element(By.ID, "queue-total"))
        print("signed in")

        reason = wait_for(driver, "the held route", lambda d: text_of(d, "hold-reason"))
        if "AADSTS7000215" not in reason:
            fail("the hold's reason should name the Entra error: {!r}".format(reason))
        held = int(text_of(driver, "held-messages"))
        queued_held = int(text_of(driver, "queue-held"))
        if held != args.held or queued_held != args.held:
            fail("expected {} held messages, the page says {} (route) and {} (queue)".format(args.held, held, queued_held))
        state = text_of(driver, "upstream-state")
        if state != "held":
            fail("the upstream's state should read 'held', not {!r}".format(state))
        print("held route shown: {} messages, reason: {}".format(held, reason))

        driver.save_screenshot(args.screenshot)
        print("screenshot saved")

        driver.find_element(By.ID, "release").click()
        wait_for(driver, "the page without a held route", lambda d: d.find_element(By.ID, "no-holds"))
        print("released")
    finally:
        driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
