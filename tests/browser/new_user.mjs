// A new user's first session in a real Chromium: log in, start a server on site `local`,
// watch the progress bar, run 1+1 in a fresh notebook, stop the server, see the
// "not running" page. Run by test_browser.py; prints a JSON summary as its last line.
//
//   node new_user.mjs <hub url> <user> <password> <screenshot dir>
//
// Environment: CHROMIUM (default /usr/bin/chromium).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, user, password, shots] = process.argv.slice(2);
const SPAWN_TIMEOUT = 90_000;
const t0 = Date.now();
const log = (...a) => console.error(`[browser ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
const summary = { screenshots: {}, progress: [], blocked: [], pageErrors: [] };

async function shot(page, name) {
  const path = join(shots, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  summary.screenshots[name] = path;
  console.log(`screenshot ${name}: ${path}`);
}

const profile = mkdtempSync(join(tmpdir(), 'fedhub-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 800 },
});
context.setDefaultTimeout(30_000);
// Only the hub under test: anything else is refused and reported.
await context.route((url) => url.hostname !== '127.0.0.1', (route) => {
  summary.blocked.push(route.request().url());
  return route.abort();
});
// The progress page's bar and message, as the user sees them, reported on every change.
await context.exposeBinding('fedhubProgress', (_src, p) => { summary.progress.push(p); });
await context.addInitScript(() => {
  if (!location.pathname.startsWith('/hub/spawn-pending/')) return;
  addEventListener('DOMContentLoaded', () => {
    const bar = document.getElementById('bar'), msg = document.getElementById('message');
    let last = '';
    const report = () => {
      const now = JSON.stringify({ progress: Number(bar.value), message: msg.textContent });
      if (now !== last) { last = now; window.fedhubProgress({ ...JSON.parse(now), t: Math.round(performance.now()) }); }
    };
    new MutationObserver(report).observe(msg, { childList: true, characterData: true, subtree: true });
    new MutationObserver(report).observe(bar, { attributes: true });
    setInterval(report, 50);  // <progress>.value changes are not attribute mutations
  });
});

const page = context.pages()[0] ?? await context.newPage();
page.on('pageerror', (e) => summary.pageErrors.push(`${page.url()}: ${e.message}`));

try {
  log('open', base + '/');
  await page.goto(base + '/');
  await page.waitForURL(/\/hub\/login/);
  summary.loginUrl = new URL(page.url()).pathname + new URL(page.url()).search;

  log('log in as', user);
  await page.getByLabel('Username').fill(user);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.waitForURL(/\/hub\/home/);

  const sites = page.locator('.card', { has: page.getByRole('heading', { name: 'Sites' }) });
  const local = sites.locator('tr', { has: page.getByRole('cell', { name: 'local', exact: true }) });
  summary.localSite = (await local.locator('td').nth(2).innerText()).trim();
  if (summary.localSite !== 'online') throw new Error(`site local is ${summary.localSite}`);
  await shot(page, 'home');

  log('start a server on site local');
  await page.getByLabel('Site').selectOption('local');
  await page.getByRole('button', { name: 'Start', exact: true }).click();
  await page.waitForURL(/\/hub\/spawn-pending\//);
  // Wait for the bar to be part-way, then capture it before the page moves on to the lab.
  await page.waitForFunction(() => {
    const v = document.getElementById('bar')?.value;
    return v > 0 && v < 100;
  }, null, { timeout: SPAWN_TIMEOUT, polling: 50 });
  await shot(page, 'progress');

  log('wait for JupyterLab');
  await page.waitForURL(new RegExp(`/user/${user}/lab`), { timeout: SPAWN_TIMEOUT });
  summary.labUrl = new URL(page.url()).pathname;
  await page.locator('.jp-Launcher').waitFor({ timeout: SPAWN_TIMEOUT });

  log('new notebook, 1+1');
  await page.locator('.jp-LauncherCard[data-category="Notebook"]').first().click();
  // A cell run before the kernel is connected is silently not executed: wait for it.
  await page.locator('.jp-StatusBar-Widget').getByText(/\| Idle$/)
    .waitFor({ timeout: SPAWN_TIMEOUT });
  const cell = page.locator('.jp-NotebookPanel:visible .jp-Cell').first();
  await cell.locator('.cm-content').click();
  await page.keyboard.type('1+1');
  await page.keyboard.press('Shift+Enter');
  const output = cell.locator('.jp-OutputArea-output');
  await output.waitFor({ timeout: SPAWN_TIMEOUT });
  summary.output = (await output.innerText()).trim();
  await shot(page, 'lab');

  log('stop from the home page');
  await page.goto(base + '/hub/home');
  await page.getByRole('button', { name: 'Stop' }).click();
  const servers = page.locator('.card', { has: page.getByRole('heading', { name: 'Your servers' }) });
  for (let i = 0; ; i++) {  // the page reloads after the stop call; a 202 stop needs a reload
    await page.waitForLoadState();
    const running = await servers.getByRole('button', { name: /Stop/ }).count();
    if (!running) break;
    if (i >= 60) throw new Error('server still listed as running after 60 s');
    await page.waitForTimeout(1000);
    await page.reload();
  }
  summary.afterStop = (await servers.innerText()).replace(/\s+/g, ' ').trim();
  await shot(page, 'stopped');

  log('open the old URL');
  const resp = await page.goto(`${base}/user/${user}/`);
  summary.notRunning = {
    status: resp.status(),
    url: new URL(page.url()).pathname,
    heading: (await page.getByRole('heading', { level: 2 }).innerText()).trim(),
    startAgain: await page.getByRole('button', { name: 'Start it again' }).isVisible(),
  };
  await shot(page, 'not-running');
  summary.ok = true;
  log('done');
} catch (err) {
  summary.ok = false;
  summary.error = String(err.stack || err);
  summary.failedAt = page.url();
  await shot(page, 'failure').catch(() => {});
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
  console.log(JSON.stringify(summary));
  process.exitCode = summary.ok ? 0 : 1;
}
