/*
 * wsbx's JavaScript guest: a WASI reactor that runs one program with QuickJS-NG.
 *
 * The host calls, on a fresh instance:
 *   _initialize()                 C runtime set-up (from wasi-libc)
 *   wsbx_prepare() -> 0 | 1       runtime, context, globals; done ahead of the request when the
 *                                 host keeps guests warm
 *   wsbx_alloc(len) -> ptr        room for the program's UTF-8 text (0 when out of memory)
 *   wsbx_run(ptr, len, mode)      runs it; returns the exit status (mode: 0 detect, 1 script,
 *                                 2 module, 3 a session's turn). `process.exit(n)` ends the instance with
 *                                 status n. It frees the program's text.
 *
 * A program is run as a classic script unless it is asked to be a module or cannot be a script
 * (it has `import`/`export`, or a top-level `await` that a script cannot hold). Then the job queue and
 * the timers run until nothing is left.
 *
 * A session calls wsbx_run again and again on one instance, each call a turn (mode 3) in the
 * same context: a turn is a classic script, so its top-level declarations (`var`, `let`,
 * `const`, `function`, `class`) stay for the next turns, unless it cannot be one (it has
 * `import`/`export` or a top-level `await`): then it runs as a module, whose declarations stay
 * its own; what it puts on `globalThis` stays. The exit status is 0, the code passed to
 * `process.exit(n)`/`std.exit(n)`, or 1 after an uncaught exception or an unhandled rejection,
 * whose message and stack go to stderr.
 *
 * Globals: `console` (log/info/debug to stdout, error/warn to stderr, objects shown as
 * JSON-like text), `setTimeout`/`clearTimeout`, `process` (`exit`, `argv`, `env`), `print`,
 * `scriptArgs`, `performance` (`now()` counts from the start of the run, `timeOrigin` is when
 * that was). `Math.random` is reseeded from the host's entropy at the start of every run.
 *
 * Nothing wsbx_prepare leaves in memory depends on when or where it ran (the clock, a seed),
 * so the host may snapshot an instance after it and start every run from that snapshot. Modules `qjs:std` and `qjs:os` give file access inside the sandbox; built for
 * WASI they have no `exec`, no signals and no sockets. Everything written goes straight to the
 * file descriptor, unbuffered, so nothing is lost when the host ends the run at a limit.
 */
#include <errno.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "quickjs-libc.h"
#include "quickjs.h"

/* QuickJS's own stack check measures the C stack in linear memory, but under wasmtime each
 * JavaScript call uses far more of the engine's wasm stack than of that: the engine's limit
 * always comes first. So the check is off, and runaway recursion ends in a clean StackOverflow
 * trap that the host reports as status `error`. The C stack is linked first in linear memory
 * (`--stack-first`), so even a C-level overflow traps instead of corrupting the heap. */
#define JS_STACK_LIMIT 0

/* console, timers and process, in JavaScript: small, and formatting objects is easier here. */
static const char BOOTSTRAP[] =
    "import * as std from 'qjs:std';\n"
    "import * as os from 'qjs:os';\n"
    "const write = globalThis.__wsbx_write; delete globalThis.__wsbx_write;\n"
    "const q = s => JSON.stringify(s);\n"
    "const key = k => /^[A-Za-z_$][\\w$]*$/.test(k) ? k : q(k);\n"
    "function show(v, depth, seen, top) {\n"
    "  switch (typeof v) {\n"
    "    case 'string': return top ? v : q(v);\n"
    "    case 'bigint': return v + 'n';\n"
    "    case 'symbol': return v.toString();\n"
    "    case 'function': return v.name ? `[Function: ${v.name}]` : '[Function (anonymous)]';\n"
    "    case 'object': break;\n"
    "    default: return Object.is(v, -0) ? '-0' : String(v);\n"
    "  }\n"
    "  if (v === null) return 'null';\n"
    "  if (seen.includes(v)) return '[Circular]';\n"
    "  if (v instanceof Error) return v.stack ? `${v.name}: ${v.message}\\n${v.stack}`.trimEnd() : `${v.name}: ${v.message}`;\n"
    "  if (v instanceof Date) return isNaN(v) ? 'Invalid Date' : v.toISOString();\n"
    "  if (v instanceof RegExp) return String(v);\n"
    "  if (depth > 4) return Array.isArray(v) ? '[Array]' : '[Object]';\n"
    "  const inner = x => show(x, depth + 1, seen.concat([v]), false);\n"
    "  if (Array.isArray(v)) return `[ ${v.map(inner).join(', ')} ]`.replace('[  ]', '[]');\n"
    "  if (v instanceof Map) return `Map(${v.size}) { ${[...v].map(([k, x]) => `${inner(k)} => ${inner(x)}`).join(', ')} }`;\n"
    "  if (v instanceof Set) return `Set(${v.size}) { ${[...v].map(inner).join(', ')} }`;\n"
    "  if (v instanceof Promise) return 'Promise {}';\n"
    "  if (ArrayBuffer.isView(v)) return `${v.constructor.name}(${v.length}) [ ${Array.from(v).join(', ')} ]`;\n"
    "  const entries = Object.keys(v).map(k => `${key(k)}: ${inner(v[k])}`);\n"
    "  const name = v.constructor && v.constructor !== Object ? v.constructor.name + ' ' : '';\n"
    "  return entries.length ? `${name}{ ${entries.join(', ')} }` : `${name}{}`;\n"
    "}\n"
    "const format = args => args.map(a => show(a, 0, [], true)).join(' ') + '\\n';\n"
    "const out = (...a) => write(1, format(a)), err = (...a) => write(2, format(a));\n"
    "globalThis.console = { log: out, info: out, debug: out, trace: out, error: err, warn: err };\n"
    "globalThis.print = out;\n"
    "globalThis.setTimeout = os.setTimeout; globalThis.clearTimeout = os.clearTimeout;\n"
    "globalThis.setInterval = os.setInterval; globalThis.clearInterval = os.clearInterval;\n"
    "globalThis.queueMicrotask ??= f => Promise.resolve().then(f);\n"
    "globalThis.process = { exit: (code = 0) => std.exit(code), argv: scriptArgs, env: std.getenviron() };\n"
    "globalThis.__wsbx_error = e => write(2, (e instanceof Error ? show(e, 0, [], true) : 'Uncaught ' + show(e, 0, [], true)) + '\\n');\n";

/* __wsbx_write(fd, string): one unbuffered write of the whole string to stdout or stderr. */
static JSValue js_write(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    int fd;
    size_t len;
    const char *s, *p;

    (void)this_val;
    if (argc < 2 || JS_ToInt32(ctx, &fd, argv[0]))
        return JS_EXCEPTION;
    if (fd != 1 && fd != 2)
        return JS_ThrowRangeError(ctx, "bad file descriptor");
    s = JS_ToCStringLen(ctx, &len, argv[1]);
    if (!s)
        return JS_EXCEPTION;
    for (p = s; len > 0;) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        p += n;
        len -= (size_t)n;
    }
    JS_FreeCString(ctx, s);
    return JS_UNDEFINED;
}

/* Math.random's state. QuickJS seeds its own generator once, from the clock, when the context
 * is made: in instances started from one snapshot that seed would repeat in every run. This
 * one is reseeded from the host's entropy at the start of each run. */
static uint64_t rng[2];

static void reseed(void)
{
    if (getentropy(rng, sizeof rng) != 0 || (rng[0] | rng[1]) == 0) {
        /* Never all zero: xorshift would stay there. */
        rng[0] ^= (uint64_t)clock();
        rng[1] = 0x9e3779b97f4a7c15u;
    }
}

/* Math.random(): xorshift128+ (as V8 and SpiderMonkey), 53 random bits in [0, 1). */
static JSValue js_random(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    uint64_t s1 = rng[0];
    const uint64_t s0 = rng[1];
    const uint64_t result = s0 + s1;

    (void)this_val, (void)argc, (void)argv;
    rng[0] = s0;
    s1 ^= s1 << 23;
    rng[1] = s1 ^ s0 ^ (s1 >> 18) ^ (s0 >> 5);
    return JS_NewFloat64(ctx, (double)(result >> 11) * 0x1.0p-53);
}

static double ms(const struct timespec *t)
{
    return (double)t->tv_sec * 1e3 + (double)t->tv_nsec / 1e6;
}

/* performance.now(): milliseconds on the monotonic clock, which the host starts at zero with
 * each run. (QuickJS's own counts from when the context was made: negative once the host
 * restarts the clock for the run, and frozen in a snapshot.) */
static JSValue js_perf_now(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    struct timespec mono;

    (void)this_val, (void)argc, (void)argv;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    return JS_NewFloat64(ctx, ms(&mono));
}

/* performance.timeOrigin: the wall-clock time (ms since the epoch) at which performance.now()
 * read zero. */
static JSValue js_time_origin(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    struct timespec real, mono;

    (void)this_val, (void)argc, (void)argv;
    clock_gettime(CLOCK_REALTIME, &real);
    clock_gettime(CLOCK_MONOTONIC, &mono);
    return JS_NewFloat64(ctx, ms(&real) - ms(&mono));
}

/* Replaces Math.random and the performance object with the ones above. */
static int add_clock_and_random(JSContext *ctx, JSValueConst global)
{
    JSValue math = JS_GetPropertyStr(ctx, global, "Math");
    int failed = JS_SetPropertyStr(ctx, math, "random", JS_NewCFunction(ctx, js_random, "random", 0)) < 0;
    JS_FreeValue(ctx, math);

    JSValue performance = JS_NewObject(ctx);
    JSAtom origin = JS_NewAtom(ctx, "timeOrigin");
    failed |= JS_SetPropertyStr(ctx, performance, "now", JS_NewCFunction(ctx, js_perf_now, "now", 0)) < 0;
    failed |= JS_DefinePropertyGetSet(ctx, performance, origin, JS_NewCFunction(ctx, js_time_origin, "get timeOrigin", 0),
                                      JS_UNDEFINED, JS_PROP_ENUMERABLE | JS_PROP_CONFIGURABLE) < 0;
    JS_FreeAtom(ctx, origin);
    failed |= JS_SetPropertyStr(ctx, global, "performance", performance) < 0;
    return failed;
}

/* Whether an allocation of the engine failed in this run. QuickJS throws `null` when it cannot
 * allocate even the error that says it is out of memory: with this the driver can tell that
 * from a program's own `throw null`. */
static bool allocation_failed;

/* The engine's allocator: the C library's, noting a failure. */
static void *note_failure(void *p, size_t size)
{
    if (!p && size)
        allocation_failed = true;
    return p;
}

static void *noting_calloc(void *opaque, size_t count, size_t size)
{
    (void)opaque;
    return note_failure(calloc(count, size), count * size);
}

static void *noting_malloc(void *opaque, size_t size)
{
    (void)opaque;
    return note_failure(malloc(size), size);
}

static void noting_free(void *opaque, void *ptr)
{
    (void)opaque;
    free(ptr);
}

static void *noting_realloc(void *opaque, void *ptr, size_t size)
{
    (void)opaque;
    return note_failure(realloc(ptr, size), size);
}

static size_t usable_size(const void *ptr)
{
    return malloc_usable_size((void *)ptr);
}

static const JSMallocFunctions noting_allocator = {
    noting_calloc, noting_malloc, noting_free, noting_realloc, usable_size,
};

/* Writes `obj[prop]` on stderr if it is a string that can be had without memory the run no
 * longer has, else `otherwise`. */
static void put_property(JSContext *ctx, JSValueConst obj, const char *prop, const char *otherwise)
{
    JSValue v = JS_GetPropertyStr(ctx, obj, prop);
    const char *s = JS_IsString(v) ? JS_ToCString(ctx, v) : NULL;
    if (JS_IsException(v) || !s)
        JS_FreeValue(ctx, JS_GetException(ctx));
    fputs(s ? s : otherwise, stderr);
    JS_FreeCString(ctx, s);
    JS_FreeValue(ctx, v);
}

/* Prints the pending exception with its stack on stderr, through the bootstrap's formatter
 * when it is there. */
static void report(JSContext *ctx)
{
    JSValue exc = JS_GetException(ctx);
    if (JS_IsNull(exc) && allocation_failed) {
        /* The engine's own out-of-memory error, which it had no room to make; formatting it
         * would need memory too. */
        fputs("InternalError: out of memory\n", stderr);
        return;
    }
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue fn = JS_GetPropertyStr(ctx, global, "__wsbx_error");
    if (JS_IsFunction(ctx, fn)) {
        JSValue r = JS_Call(ctx, fn, JS_UNDEFINED, 1, (JSValueConst *)&exc);
        if (JS_IsException(r)) {
            JS_FreeValue(ctx, JS_GetException(ctx));
            if (allocation_failed && JS_IsError(exc)) {
                /* No memory left to format the error: QuickJS's own dump would then print
                 * its message alone ("out of memory"). Its name and message, as they are. */
                put_property(ctx, exc, "name", "Error");
                fputs(": ", stderr);
                put_property(ctx, exc, "message", "");
                fputc('\n', stderr);
            } else {
                JS_Throw(ctx, JS_DupValue(ctx, exc));
                js_std_dump_error(ctx);
            }
        }
        JS_FreeValue(ctx, r);
    } else {
        JS_Throw(ctx, JS_DupValue(ctx, exc));
        js_std_dump_error(ctx);
    }
    JS_FreeValue(ctx, fn);
    JS_FreeValue(ctx, global);
    JS_FreeValue(ctx, exc);
}

/* Evaluates a module: compile, set import.meta, run, and wait for its top-level await. */
static JSValue eval_module(JSContext *ctx, const char *code, size_t len, const char *name)
{
    JSValue val = JS_Eval(ctx, code, len, name, JS_EVAL_TYPE_MODULE | JS_EVAL_FLAG_COMPILE_ONLY);
    if (JS_IsException(val))
        return val;
    if (js_module_set_import_meta(ctx, val, false, true) < 0) {
        JS_FreeValue(ctx, val);
        return JS_EXCEPTION;
    }
    val = JS_EvalFunction(ctx, val);
    return js_std_await(ctx, val);
}

/* Whether the pending exception is a SyntaxError (then a script may be a module after all). */
static int pending_syntax_error(JSContext *ctx)
{
    JSValue exc = JS_GetException(ctx);
    JSValue name = JS_GetPropertyStr(ctx, exc, "name");
    const char *s = JS_ToCString(ctx, name);
    int is = s && strcmp(s, "SyntaxError") == 0;
    JS_FreeCString(ctx, s);
    JS_FreeValue(ctx, name);
    JS_Throw(ctx, exc);
    return is;
}

/* A session's turn must not end the instance on an unhandled rejection, as quickjs-libc's
 * tracker does (exit(1)): a turn tracks its rejected promises here instead and, once its jobs
 * and timers are done, reports those still unhandled and fails, leaving the session alive. */
struct rejection {
    JSValue promise, reason;
    struct rejection *next;
};
static struct rejection *turn_rejections;

static void turn_tracker(JSContext *ctx, JSValueConst promise, JSValueConst reason, bool is_handled, void *opaque)
{
    struct rejection **at = &turn_rejections;

    (void)opaque;
    while (*at && !JS_IsSameValue(ctx, (*at)->promise, promise))
        at = &(*at)->next;
    if (is_handled && *at) {
        struct rejection *r = *at;
        *at = r->next;
        JS_FreeValue(ctx, r->promise);
        JS_FreeValue(ctx, r->reason);
        free(r);
    } else if (!is_handled && !*at) {
        struct rejection *r = malloc(sizeof *r);
        if (r) {
            r->promise = JS_DupValue(ctx, promise);
            r->reason = JS_DupValue(ctx, reason);
            r->next = NULL;
            *at = r;
        }
    }
}

/* Reports and forgets the turn's unhandled rejections; whether there were any. */
static int report_rejections(JSContext *ctx)
{
    int any = turn_rejections != NULL;
    while (turn_rejections) {
        struct rejection *r = turn_rejections;
        turn_rejections = r->next;
        fputs("Possibly unhandled promise rejection: ", stderr);
        JS_Throw(ctx, r->reason);
        report(ctx);
        JS_FreeValue(ctx, r->promise);
        free(r);
    }
    return any;
}

/* The one runtime and context of this instance, made by wsbx_prepare. */
static JSRuntime *the_rt;
static JSContext *the_ctx;

/* Sets up the runtime, the context, the std/os modules and the bootstrap globals. */
__attribute__((export_name("wsbx_prepare")))
int wsbx_prepare(void)
{
    static char *no_args[] = { "qjs", NULL };

    /* Relative paths land in the scratch directory the host grants. */
    if (chdir("/scratch") != 0)
        errno = 0;
    the_rt = JS_NewRuntime2(&noting_allocator, NULL);
    if (!the_rt)
        return 1;
    JS_SetMaxStackSize(the_rt, JS_STACK_LIMIT);
    js_std_init_handlers(the_rt);
    JS_SetModuleLoaderFunc2(the_rt, NULL, js_module_loader, js_module_check_attributes, NULL);
    JS_SetHostPromiseRejectionTracker(the_rt, js_std_promise_rejection_tracker, NULL);
    the_ctx = JS_NewContext(the_rt);
    if (!the_ctx)
        return 1;
    js_init_module_std(the_ctx, "qjs:std");
    js_init_module_os(the_ctx, "qjs:os");
    js_std_add_helpers(the_ctx, 1, no_args);
    JSValue global = JS_GetGlobalObject(the_ctx);
    JS_SetPropertyStr(the_ctx, global, "__wsbx_write", JS_NewCFunction(the_ctx, js_write, "write", 2));
    int failed = add_clock_and_random(the_ctx, global);
    JS_FreeValue(the_ctx, global);
    if (failed)
        return 1;

    JSValue val = eval_module(the_ctx, BOOTSTRAP, sizeof(BOOTSTRAP) - 1, "<wsbx>");
    if (JS_IsException(val)) {
        js_std_dump_error(the_ctx);
        return 1;
    }
    JS_FreeValue(the_ctx, val);
    return 0;
}

__attribute__((export_name("wsbx_alloc")))
char *wsbx_alloc(size_t len)
{
    return malloc(len + 1);
}

__attribute__((export_name("wsbx_run")))
int wsbx_run(char *code, size_t len, int mode)
{
    static const char name[] = "<input>";
    JSValue val;

    if (!the_ctx) {
        fprintf(stderr, "qjs: wsbx_run before wsbx_prepare\n");
        return 1;
    }
    if (!code) {
        fprintf(stderr, "qjs: out of memory for the program\n");
        return 1;
    }
    code[len] = '\0';
    reseed();
    allocation_failed = false;
    if (mode == 3)
        JS_SetHostPromiseRejectionTracker(the_rt, turn_tracker, NULL);
    if (mode == 2) {
        val = eval_module(the_ctx, code, len, name);
    } else {
        val = JS_Eval(the_ctx, code, len, name, JS_EVAL_TYPE_GLOBAL);
        /* `import`, `export` or a top-level `await` is a SyntaxError in a script: run it as the
         * module it is. Nothing of the script ran: it did not compile. (Cheaper than asking
         * JS_DetectModule first, which parses the program in a runtime of its own.) */
        int could_be_module = strstr(code, "await") || strstr(code, "import") || strstr(code, "export");
        if (JS_IsException(val) && (mode == 0 || mode == 3) && could_be_module && pending_syntax_error(the_ctx)) {
            JS_FreeValue(the_ctx, JS_GetException(the_ctx));
            val = eval_module(the_ctx, code, len, name);
        }
    }
    /* Compiled code keeps no pointer into the text: free it, or a session would keep every
     * turn's program. */
    free(code);
    if (JS_IsException(val)) {
        report(the_ctx);
        report_rejections(the_ctx);
        return 1;
    }
    JS_FreeValue(the_ctx, val);

    /* Jobs and timers, to the end; an unhandled rejection exits 1 from inside the loop. */
    if (js_std_loop(the_ctx)) {
        report(the_ctx);
        report_rejections(the_ctx);
        return 1;
    }
    if (report_rejections(the_ctx))
        return 1;
    /* A one-shot instance is thrown away after this, a session's waits for its next turn:
     * no teardown either way. */
    return 0;
}
