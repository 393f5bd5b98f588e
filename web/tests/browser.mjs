// Debian's headless Chromium through playwright-core, as the dashboard's
// browser test and benchmark start it: no browser download; as root it
// needs --no-sandbox, and with no internet its background connections only
// fail, so they are off.

import { chromium } from "playwright-core";

/** Starts the browser (`CHROMIUM` names another executable). */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
