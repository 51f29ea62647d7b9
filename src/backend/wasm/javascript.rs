//! JavaScript: QuickJS-NG with our driver (`guests/quickjs/driver.c`), a WASI command module,
//! one fresh instance per run.

use std::sync::Arc;

use wasmtime::{InstancePre, Linker};

use super::wasi::{self, Grants};
use super::{run_guest, GuestState, WasmEngine};
use crate::backend::{Backend, Outcome};
use crate::request::ExecRequest;
use crate::runtimes::Javascript;
use crate::scratch::Scratch;

/// Runs JavaScript jobs.
pub struct JavascriptBackend {
    engine: Arc<WasmEngine>,
    pre: InstancePre<GuestState>,
}

impl JavascriptBackend {
    /// Links the interpreter once; every run instantiates from the result.
    pub fn new(engine: Arc<WasmEngine>, javascript: Javascript) -> Result<JavascriptBackend, String> {
        let mut linker = Linker::new(engine.engine());
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut GuestState| &mut s.wasi)
            .map_err(|e| format!("linking WASI: {e}"))?;
        wasi::replace_poll_oneoff(&mut linker).map_err(|e| format!("linking poll_oneoff: {e}"))?;
        let pre = linker
            .instantiate_pre(&javascript.module)
            .map_err(|e| format!("linking the javascript module: {e}"))?;
        Ok(JavascriptBackend { engine, pre })
    }
}

impl Backend for JavascriptBackend {
    fn run(&self, request: &ExecRequest, scratch: &Scratch) -> Outcome {
        let args = ["qjs".to_owned(), "-e".to_owned(), request.code.clone()];
        let mut env: Vec<(String, String)> = vec![("HOME".into(), "/scratch".into())];
        env.extend(request.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let grants = Grants { args: &args, env, dirs: vec![(scratch.path(), "/scratch", true)] };
        run_guest(&self.engine, &self.pre, request, &grants, |store, instance| {
            let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
            // A command that returns from `_start` exited 0; any other exit is `proc_exit`.
            start.call(&mut *store, ()).map(|()| 0)
        })
    }
}
