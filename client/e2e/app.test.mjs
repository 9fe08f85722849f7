// End-to-end: the built client, served by a real `blog up` (every service,
// the bus and the gateway) on free ports, driven in Debian's Chromium.
// Needs: target/debug/blog (or BLOG_BIN), client/dist (npm run build),
// /usr/bin/chromium (or CHROMIUM).

/* global document, window -- the page.evaluate callbacks run in the browser */

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

const root = path.resolve(import.meta.dirname, '../..');
const bin = process.env.BLOG_BIN ?? path.join(root, 'target/debug/blog');
const dist = path.join(root, 'client/dist');
const screenshot = path.join(root, 'docs/screenshot.png');

let server;
let browser;
let gateway;
let dataDir;
let upArgs;

// Free ports for the parts. Every listener stays open until the last is
// bound: a port released before the next is asked for can be handed out
// again, and two parts then race for it.
async function freePorts(count) {
  const held = [];
  try {
    for (let i = 0; i < count; i++) {
      const s = net.createServer();
      held.push(s);
      await new Promise((resolve, reject) => {
        s.once('error', reject);
        s.listen(0, '127.0.0.1', resolve);
      });
    }
    return held.map((s) => s.address().port);
  } finally {
    await Promise.all(held.map((s) => new Promise((resolve) => s.close(() => resolve()))));
  }
}

async function waitFor(check, what, timeoutMs = 30000) {
  const started = Date.now();
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() - started > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

before(async () => {
  assert.ok(fs.existsSync(bin), `${bin} is missing: cargo build --bin blog`);
  assert.ok(fs.existsSync(path.join(dist, 'index.html')), 'client/dist is missing: npm run build');
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blog-e2e-'));
  const names = ['gateway', 'posts', 'comments', 'query', 'moderation', 'event-bus'];
  const free = await freePorts(names.length);
  const ports = Object.fromEntries(names.map((n, i) => [n, free[i]]));
  const args = ['up', '--data-dir', dataDir, '--client-dir', dist];
  for (const n of names) args.push(`--${n}-port`, String(ports[n]));
  upArgs = args;
  gateway = `http://127.0.0.1:${ports.gateway}`;
  await startServer();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
  server?.kill('SIGTERM');
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

async function startServer() {
  server = spawn(bin, upArgs, { env: { ...process.env, BLOG_LOG: 'warn' }, stdio: ['ignore', 'inherit', 'inherit'] });
  // A server that exits while starting fails the wait at once, not after its timeout.
  let exitCode = null;
  server.once('exit', (code, signal) => (exitCode = code ?? signal));
  await waitFor(async () => exitCode !== null || (await fetch(`${gateway}/posts`)).ok, 'blog up');
  if (exitCode !== null) throw new Error(`blog up exited while starting (${exitCode})`);
}

async function stopServer() {
  const exited = new Promise((resolve) => server.once('exit', resolve));
  server.kill('SIGTERM');
  await exited;
}

async function openPage() {
  const page = await browser.newPage({ viewport: { width: 1100, height: 800 } });
  await page.goto(gateway);
  await page.locator('[data-live-status="live"]').waitFor();
  return page;
}

async function createPost(page, title) {
  const form = page.locator('section.create-post');
  await form.getByLabel('Title').fill(title);
  await form.getByRole('button', { name: 'Submit' }).click();
  const card = page.getByRole('article', { name: title });
  await card.waitFor();
  await assert.doesNotReject(async () => assert.equal(await form.getByLabel('Title').inputValue(), ''));
  return card;
}

async function comment(card, content) {
  await card.getByRole('textbox', { name: 'New Comment', exact: true }).fill(content);
  await card.getByRole('button', { name: 'Submit' }).click();
}

test('a post, a rejected and an approved comment, updated live without a reload', async () => {
  const page = await openPage();
  let reloads = 0;
  page.on('framenavigated', () => {
    reloads += 1;
  });
  const card = await createPost(page, 'Hello from the browser');
  await comment(card, 'I like orange juice');
  await card.getByText('This comment has been rejected').waitFor();
  await comment(card, 'What a lovely post');
  await card.getByText('What a lovely post').waitFor();
  assert.equal(await card.getByText('This comment is awaiting moderation').count(), 0);
  assert.equal(reloads, 0, 'no reload');
  await createPost(page, 'Event-driven microservices in Rust');
  await page.screenshot({ path: screenshot, fullPage: true });
  await page.close();
});

test('a second page sees a post made in the first appear live', async () => {
  const first = await openPage();
  const second = await openPage();
  await createPost(first, 'Seen in another tab');
  await second.getByRole('article', { name: 'Seen in another tab' }).waitFor();
  const card = second.getByRole('article', { name: 'Seen in another tab' });
  await comment(first.getByRole('article', { name: 'Seen in another tab' }), 'hello other tab');
  await card.getByText('hello other tab').waitFor();
  await first.close();
  await second.close();
});

test('a comment with markup is shown as text and runs nothing', async () => {
  const page = await openPage();
  const dialogs = [];
  page.on('dialog', async (dialog) => {
    dialogs.push(dialog.message());
    await dialog.dismiss();
  });
  const card = await createPost(page, 'Markup');
  const evil = '<img src=x onerror=alert(1)>';
  await comment(card, evil);
  await card.getByText(evil, { exact: true }).waitFor();
  assert.equal(await card.locator('.comments img').count(), 0);
  await page.waitForTimeout(300);
  assert.deepEqual(dialogs, []);
  await page.close();
});

test('bad input is shown next to the field', async () => {
  const page = await openPage();
  const form = page.locator('section.create-post');
  await form.getByLabel('Title').fill('x'.repeat(201));
  await form.getByRole('button', { name: 'Submit' }).click();
  await form.getByRole('alert').getByText('title must be at most 200 characters').waitFor();
  await page.close();
});

test('the page reconnects after the server restarts and catches up', async () => {
  const page = await openPage();
  await createPost(page, 'Before the restart');
  await stopServer();
  await page.locator('[data-live-status="reconnecting"], [data-live-status="offline"]').first().waitFor();
  await startServer();
  // Made while the page was away: it must appear without a reload.
  const created = await fetch(`${gateway}/posts/create`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ title: 'Made during the outage' }),
  });
  assert.equal(created.status, 201);
  await page.getByRole('article', { name: 'Made during the outage' }).waitFor({ timeout: 30000 });
  await page.locator('[data-live-status="live"]').waitFor({ timeout: 30000 });
  await page.getByRole('article', { name: 'Before the restart' }).waitFor();
  await page.close();
});

test('the page fits a phone screen', async () => {
  const page = await browser.newPage({ viewport: { width: 375, height: 740 } });
  await page.goto(gateway);
  await page.locator('[data-live-status="live"]').waitFor();
  await createPost(page, 'A title that is rather long for a small phone screen, to see it wrap');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `no horizontal scrolling (overflow ${overflow}px)`);
  await page.screenshot({ path: path.join(root, 'docs/screenshot-phone.png') });
  await page.close();
});
