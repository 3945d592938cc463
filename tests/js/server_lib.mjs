// server_lib.mjs: starts `$FM_BIN serve` on a free loopback port for the server tests and
// stops it again. The model is $FM_SERVE_MODEL when set, else the bundled demo model
// (serve's default). Not a test file itself.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';

export const BIN = process.env.FM_BIN || 'build/flash-moe';
export const MODEL_ARGS = process.env.FM_SERVE_MODEL ? [process.env.FM_SERVE_MODEL] : [];

// Starts a server with extra args; resolves to { url, port, proc, stop(), stderr() }.
export async function startServer(args = [], env = {}) {
  const proc = spawn(BIN, ['serve', ...MODEL_ARGS, '--host', '127.0.0.1', '--port', '0', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  let err = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start within 60 s:\n${err}`)), 60000);
    proc.stderr.on('data', (d) => {
      err += d.toString();
      const m = err.match(/serving .* on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    proc.on('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? sig}) before listening:\n${err}`));
    });
  });
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i++) {
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) break;
    } catch { /* not yet */ }
    await new Promise((r) => setTimeout(r, 50));
  }
  const exited = new Promise((resolve) => proc.on('exit', (code, sig) => resolve({ code, sig })));
  return {
    url,
    port,
    proc,
    stderr: () => err,
    // SIGTERM, then the exit status (0 expected: clean shutdown, no sanitizer report).
    async stop() {
      if (proc.exitCode !== null) return { code: proc.exitCode, sig: null };
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 30000);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
}

// Resident set size of a process in kB (Linux /proc).
export function rssKb(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/);
  return m ? Number(m[1]) : 0;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
