// A peer for the JavaScript rows: quickjs-emscripten, a new runtime and context per run (the
// isolation wsbx gives every run), running `console.log(1+1)` with console.log captured.
// Prints {"p50_ms": .., "p99_ms": ..} for the bench harness.
import { getQuickJS } from "quickjs-emscripten";

const runs = Number(process.argv[2] ?? 300);
const pauseMs = Number(process.argv[3] ?? 8);
const QuickJS = await getQuickJS();

function once() {
  const runtime = QuickJS.newRuntime();
  runtime.setMemoryLimit(256 << 20);
  const vm = runtime.newContext();
  let out = "";
  const log = vm.newFunction("log", (...args) => {
    out += args.map((a) => vm.dump(a)).join(" ") + "\n";
  });
  const consoleObj = vm.newObject();
  vm.setProp(consoleObj, "log", log);
  vm.setProp(vm.global, "console", consoleObj);
  log.dispose();
  consoleObj.dispose();
  const result = vm.evalCode("console.log(1+1)");
  if (result.error) {
    result.error.dispose();
    throw new Error("the peer failed");
  }
  result.value.dispose();
  vm.dispose();
  runtime.dispose();
  if (out !== "2\n") throw new Error(`unexpected output ${JSON.stringify(out)}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
for (let i = 0; i < 20; i++) once();
const times = [];
for (let i = 0; i < runs; i++) {
  await sleep(pauseMs);
  const t = process.hrtime.bigint();
  once();
  times.push(Number(process.hrtime.bigint() - t) / 1e6);
}
times.sort((a, b) => a - b);
const at = (p) => times[Math.min(times.length - 1, Math.round((times.length - 1) * p))];
console.log(JSON.stringify({ p50_ms: at(0.5), p99_ms: at(0.99) }));
