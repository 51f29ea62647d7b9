;; A hostile and a sleepy caller of poll_oneoff, for wsbx's replacement of it.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)

  ;; Claims four billion subscriptions: the host must refuse (EFAULT), not allocate for them.
  (func (export "huge") (result i32)
    (call $poll_oneoff (i32.const 0) (i32.const 0) (i32.const -1) (i32.const 1024)))

  ;; One relative clock subscription of 60 s at offset 0 (userdata 0, tag 0 = clock,
  ;; clock id 1 = monotonic at +16, timeout at +24, flags 0); events at 512, count at 1024.
  (func (export "sleep_a_minute") (result i32)
    (i64.store (i32.const 24) (i64.const 60000000000))
    (i32.store (i32.const 16) (i32.const 1))
    (call $poll_oneoff (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 1024)))

  ;; The same, for 1 ms: returns 0 with one event written.
  (func (export "sleep_a_millisecond") (result i32)
    (i64.store (i32.const 24) (i64.const 1000000))
    (i32.store (i32.const 16) (i32.const 1))
    (call $poll_oneoff (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 1024)))
)
