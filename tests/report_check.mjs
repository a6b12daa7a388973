// Opens a tokentrail report in headless Chromium (Playwright driving Debian's browser), records
// console errors, page errors and every request that is not the page itself, reads each panel's
// data per pattern from the DOM, takes a full-page screenshot, and prints one JSON object.
//
//   node tests/report_check.mjs REPORT.html SCREENSHOT.png
// Environment: TOKENTRAIL_CHROMIUM (the browser), NODE_PATH or TOKENTRAIL_NODE_MODULES (where
// playwright-core is installed).
import { createRequire } from 'node:module';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [html, png] = process.argv.slice(2);
const modules = process.env.TOKENTRAIL_NODE_MODULES;
const require = createRequire(modules ? path.join(modules, 'x.js') : import.meta.url);
const { chromium } = require('playwright-core');

const browser = await chromium.launch({
  executablePath: process.env.TOKENTRAIL_CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const result = { consoleErrors: [], pageErrors: [], requests: [], panels: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const url = pathToFileURL(path.resolve(html)).href;
  page.on('console', (m) => { if (m.type() === 'error') result.consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => result.pageErrors.push(String(e)));
  page.on('request', (r) => { if (r.url() !== url) result.requests.push(r.url()); });
  await page.goto(url, { waitUntil: 'load' });
  result.title = await page.title();
  result.panels = await page.$$eval('section.panel', (sections) => sections.map((s) => {
    const perPattern = {};
    for (const p of ['passthrough', 'broker']) {
      const els = [...s.querySelectorAll(`[data-pattern="${p}"]`)];
      perPattern[p] = {
        elements: els.length,
        // Elements saying there is nothing to show.
        empty: els.filter((e) => e.classList.contains('empty')).length,
        // Table rows and chart marks carrying numbers.
        rows: els.filter((e) => e.tagName === 'TR' || e.tagName === 'TABLE').length,
        series: els.filter((e) => e.tagName === 'polyline').map((e) => Number(e.getAttribute('data-points'))),
        bars: els.filter((e) => e.tagName === 'g' || e.classList.contains('stack')).length,
      };
    }
    const box = s.getBoundingClientRect();
    return {
      id: s.id,
      title: s.querySelector('h2')?.textContent ?? '',
      metrics: (s.getAttribute('data-metrics') || '').split(' ').filter(Boolean),
      visible: box.width > 0 && box.height > 0,
      svgs: s.querySelectorAll('svg').length,
      patterns: perPattern,
    };
  }));
  await page.screenshot({ path: png, fullPage: true });
  result.screenshot = png;
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
