;; A WASI command: prints the file "prompt.txt" of its first preopened folder (fd 3), as a
;; LlamaEdge app reads files from the folder given with --dir .:. ; exits 1 when it cannot.
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  ;; 0 fd | 8 iovec | 16 nread | 24 nwritten | 64 path | 1024 buffer (4 KiB)
  (data (i32.const 64) "prompt.txt")
  (func (export "_start")
    ;; rights: fd_read (bit 1)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 10) (i32.const 0)
                         (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 0))
      (then (call $proc_exit (i32.const 1))))
    (i32.store (i32.const 8) (i32.const 1024))
    (i32.store (i32.const 12) (i32.const 4096))
    (if (call $fd_read (i32.load (i32.const 0)) (i32.const 8) (i32.const 1) (i32.const 16))
      (then (call $proc_exit (i32.const 1))))
    (i32.store (i32.const 12) (i32.load (i32.const 16)))
    (drop (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 24)))))
