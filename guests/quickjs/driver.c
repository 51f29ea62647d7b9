/*
 * wsbx's JavaScript guest: a WASI command that runs one program with QuickJS-NG.
 *
 *   qjs [--module | --script] -e CODE [ARGS...]
 *   qjs [--module | --script] FILE [ARGS...]
 *   qjs [--module | --script]                 (the program is read from stdin)
 *
 * A program is run as a classic script unless it is asked to be a module or looks like one
 * (`import`/`export`, or a top-level `await` that a script cannot hold). Then the job queue and
 * the timers run until nothing is left. The exit status is 0, the code passed to
 * `process.exit(n)`/`std.exit(n)`, or 1 after an uncaught exception or an unhandled rejection,
 * whose message and stack go to stderr.
 *
 * Globals: `console` (log/info/debug to stdout, error/warn to stderr, objects shown as
 * JSON-like text), `setTimeout`/`clearTimeout`, `process` (`exit`, `argv`, `env`), `print`,
 * `scriptArgs`. Modules `qjs:std` and `qjs:os` give file access inside the sandbox; built for
 * WASI they have no `exec`, no signals and no sockets. Everything written goes straight to the
 * file descriptor, unbuffered, so nothing is lost when the host ends the run at a limit.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* Prints the pending exception with its stack on stderr, through the bootstrap's formatter
 * when it is there. */
static void report(JSContext *ctx)
{
    JSValue exc = JS_GetException(ctx);
    JSValue global = JS_GetGlobalObject(ctx);
    JSValue fn = JS_GetPropertyStr(ctx, global, "__wsbx_error");
    if (JS_IsFunction(ctx, fn)) {
        JSValue r = JS_Call(ctx, fn, JS_UNDEFINED, 1, (JSValueConst *)&exc);
        if (JS_IsException(r)) {
            JS_FreeValue(ctx, JS_GetException(ctx));
            JS_Throw(ctx, JS_DupValue(ctx, exc));
            js_std_dump_error(ctx);
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

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap + 1);
    if (!buf)
        return NULL;
    while ((r = fread(buf + n, 1, cap - n, f)) > 0) {
        n += r;
        if (n == cap) {
            char *bigger = realloc(buf, cap * 2 + 1);
            if (!bigger) {
                free(buf);
                return NULL;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    int i = 1, force_module = 0, force_script = 0;
    const char *name = "<input>";
    char *code = NULL;
    size_t len = 0;

    for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
        if (!strcmp(argv[i], "--module"))
            force_module = 1;
        else if (!strcmp(argv[i], "--script"))
            force_script = 1;
        else {
            fprintf(stderr, "qjs: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (i + 1 < argc && !strcmp(argv[i], "-e")) {
        code = strdup(argv[i + 1]);
        len = strlen(argv[i + 1]);
        i += 2;
    } else if (i < argc) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            fprintf(stderr, "qjs: cannot open %s: %s\n", argv[i], strerror(errno));
            return 2;
        }
        name = argv[i++];
        code = read_all(f, &len);
        fclose(f);
    } else {
        code = read_all(stdin, &len);
    }
    if (!code) {
        fprintf(stderr, "qjs: out of memory reading the program\n");
        return 1;
    }
    /* Relative paths land in the scratch directory when the host grants one. */
    if (chdir("/scratch") != 0)
        errno = 0;

    JSRuntime *rt = JS_NewRuntime();
    if (!rt) {
        fprintf(stderr, "qjs: out of memory\n");
        return 1;
    }
    JS_SetMaxStackSize(rt, JS_STACK_LIMIT);
    js_std_init_handlers(rt);
    JS_SetModuleLoaderFunc2(rt, NULL, js_module_loader, js_module_check_attributes, NULL);
    JS_SetHostPromiseRejectionTracker(rt, js_std_promise_rejection_tracker, NULL);
    JSContext *ctx = JS_NewContext(rt);
    if (!ctx) {
        fprintf(stderr, "qjs: out of memory\n");
        return 1;
    }
    js_init_module_std(ctx, "qjs:std");
    js_init_module_os(ctx, "qjs:os");
    js_std_add_helpers(ctx, argc - i, argv + i);
    JSValue global = JS_GetGlobalObject(ctx);
    JS_SetPropertyStr(ctx, global, "__wsbx_write", JS_NewCFunction(ctx, js_write, "write", 2));
    JS_FreeValue(ctx, global);

    JSValue val = eval_module(ctx, BOOTSTRAP, sizeof(BOOTSTRAP) - 1, "<wsbx>");
    if (JS_IsException(val)) {
        js_std_dump_error(ctx);
        return 1;
    }
    JS_FreeValue(ctx, val);

    int module = force_module || (!force_script && JS_DetectModule(code, len));
    if (module) {
        val = eval_module(ctx, code, len, name);
    } else {
        val = JS_Eval(ctx, code, len, name, JS_EVAL_TYPE_GLOBAL);
        /* A top-level await is a SyntaxError in a script: run it as the module it is. */
        if (JS_IsException(val) && !force_script && strstr(code, "await") && pending_syntax_error(ctx)) {
            JS_FreeValue(ctx, JS_GetException(ctx));
            val = eval_module(ctx, code, len, name);
        }
    }
    if (JS_IsException(val)) {
        report(ctx);
        return 1;
    }
    JS_FreeValue(ctx, val);

    /* Jobs and timers, to the end; an unhandled rejection exits 1 from inside the loop. */
    if (js_std_loop(ctx)) {
        report(ctx);
        return 1;
    }
    /* The process ends here; the runtime is not torn down (the instance is thrown away). */
    return 0;
}
