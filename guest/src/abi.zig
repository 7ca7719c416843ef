//! What the guest imports from the host (guest/ABI.md): WASI-NN as WasmEdge's GGML plugin
//! defines it, and llama-host's own `llama_host_v1` module.
const std = @import("std");

/// Every failure a WASI-NN or llama_host_v1 call can report, one per errno.
pub const Error = error{
    InvalidArgument,
    InvalidEncoding,
    MissingMemory,
    Busy,
    RuntimeError,
    UnsupportedOperation,
    TooLarge,
    NotFound,
    EndOfSequence,
    ContextFull,
    PromptTooLong,
    ModelNotFound,
    UnknownErrno,
};

fn check(rc: u32) Error!void {
    return switch (rc) {
        0 => {},
        1 => error.InvalidArgument,
        2 => error.InvalidEncoding,
        3 => error.MissingMemory,
        4 => error.Busy,
        5 => error.RuntimeError,
        6 => error.UnsupportedOperation,
        7 => error.TooLarge,
        8 => error.NotFound,
        100 => error.EndOfSequence,
        101 => error.ContextFull,
        102 => error.PromptTooLong,
        103 => error.ModelNotFound,
        else => error.UnknownErrno,
    };
}

/// WASI-NN tensor: 20 bytes on wasm32 (five little-endian u32).
const Tensor = extern struct {
    dims_ptr: [*]const u32,
    dims_len: u32,
    type: u32,
    data_ptr: [*]const u8,
    data_len: u32,
};
const tensor_type_u8 = 3;
const tensor_type_i32 = 4;

const nn = struct {
    extern "wasi_ephemeral_nn" fn load_by_name(name: [*]const u8, name_len: u32, graph_out: *u32) u32;
    extern "wasi_ephemeral_nn" fn init_execution_context(graph: u32, ctx_out: *u32) u32;
    extern "wasi_ephemeral_nn" fn set_input(ctx: u32, index: u32, tensor: *const Tensor) u32;
    extern "wasi_ephemeral_nn" fn compute(ctx: u32) u32;
    extern "wasi_ephemeral_nn" fn compute_single(ctx: u32) u32;
    extern "wasi_ephemeral_nn" fn fini_single(ctx: u32) u32;
    extern "wasi_ephemeral_nn" fn get_output(ctx: u32, index: u32, buf: [*]u8, buf_max: u32, written: *u32) u32;
    extern "wasi_ephemeral_nn" fn get_output_single(ctx: u32, index: u32, buf: [*]u8, buf_max: u32, written: *u32) u32;
    extern "wasi_ephemeral_nn" fn finalize_execution_context(ctx: u32) u32;
};

const ext = struct {
    extern "llama_host_v1" fn model_info(graph: u32, buf: [*]u8, buf_max: u32, written: *u32) u32;
    extern "llama_host_v1" fn request_size() u32;
    extern "llama_host_v1" fn request_read(buf: [*]u8, buf_max: u32, written: *u32) u32;
    extern "llama_host_v1" fn emit(ptr: [*]const u8, len: u32) u32;
    extern "llama_host_v1" fn last_error(buf: [*]u8, buf_max: u32, written: *u32) u32;
};

pub const Graph = struct {
    id: u32,

    pub fn loadByName(name: []const u8) Error!Graph {
        var id: u32 = undefined;
        try check(nn.load_by_name(name.ptr, @intCast(name.len), &id));
        return .{ .id = id };
    }

    /// The model's metadata JSON (llama_host_v1.model_info); caller owns the bytes.
    pub fn info(self: Graph, gpa: std.mem.Allocator) (Error || error{OutOfMemory})![]u8 {
        const Reader = struct {
            graph: u32,
            fn read(r: @This(), buf: []u8, written: *u32) u32 {
                return ext.model_info(r.graph, buf.ptr, @intCast(buf.len), written);
            }
        };
        return readAll(gpa, Reader{ .graph = self.id });
    }

    pub fn context(self: Graph) Error!Context {
        var id: u32 = undefined;
        try check(nn.init_execution_context(self.id, &id));
        return .{ .id = id };
    }
};

pub const Context = struct {
    id: u32,

    pub const Input = enum(u32) { prompt = 0, metadata = 1 };
    /// logprobs, prompt_logprobs: llama-host's, with the `logprobs` metadata key (logprobs.zig);
    /// tokens: llama-host's, the generated token ids (`return-tokens`).
    pub const Output = enum(u32) { text = 0, metadata = 1, logprobs = 2, prompt_logprobs = 3, tokens = 4 };

    pub fn setInput(self: Context, index: Input, data: []const u8) Error!void {
        const dims = [_]u32{@intCast(data.len)};
        const tensor = Tensor{ .dims_ptr = &dims, .dims_len = 1, .type = tensor_type_u8, .data_ptr = data.ptr, .data_len = @intCast(data.len) };
        try check(nn.set_input(self.id, @intFromEnum(index), &tensor));
    }

    /// The prompt as token ids (an i32 tensor: llama-host's; the host checks them against the
    /// vocabulary, InvalidArgument otherwise).
    pub fn setTokens(self: Context, tokens: []const i32) Error!void {
        const dims = [_]u32{@intCast(tokens.len)};
        const bytes = std.mem.sliceAsBytes(tokens);
        const tensor = Tensor{ .dims_ptr = &dims, .dims_len = 1, .type = tensor_type_i32, .data_ptr = bytes.ptr, .data_len = @intCast(bytes.len) };
        try check(nn.set_input(self.id, @intFromEnum(Input.prompt), &tensor));
    }

    pub fn compute(self: Context) Error!void {
        try check(nn.compute(self.id));
    }

    /// One token; error.EndOfSequence or error.ContextFull when generation is over.
    pub fn computeSingle(self: Context) Error!void {
        try check(nn.compute_single(self.id));
    }

    pub fn finiSingle(self: Context) void {
        _ = nn.fini_single(self.id);
    }

    /// get_output; caller owns the bytes.
    pub fn output(self: Context, gpa: std.mem.Allocator, index: Output) (Error || error{OutOfMemory})![]u8 {
        return readAll(gpa, OutputReader{ .ctx = self.id, .index = @intFromEnum(index), .single = false });
    }

    /// get_output_single: the last token's text (index text) into `buf` when it fits, else
    /// allocated with `gpa` (then the caller owns it).
    pub fn outputSingle(self: Context, gpa: std.mem.Allocator, index: Output, buf: []u8) (Error || error{OutOfMemory})![]u8 {
        var written: u32 = 0;
        check(nn.get_output_single(self.id, @intFromEnum(index), buf.ptr, @intCast(buf.len), &written)) catch |err| switch (err) {
            error.TooLarge => return readAll(gpa, OutputReader{ .ctx = self.id, .index = @intFromEnum(index), .single = true }),
            else => return err,
        };
        return buf[0..written];
    }

    pub fn finalize(self: Context) void {
        _ = nn.finalize_execution_context(self.id);
    }

    const OutputReader = struct {
        ctx: u32,
        index: u32,
        single: bool,
        fn read(r: @This(), buf: []u8, written: *u32) u32 {
            const f = if (r.single) &nn.get_output_single else &nn.get_output;
            return f(r.ctx, r.index, buf.ptr, @intCast(buf.len), written);
        }
    };
};

/// The request this run answers (llama_host_v1.request_read); caller owns the bytes.
pub fn readRequest(gpa: std.mem.Allocator) (Error || error{OutOfMemory})![]u8 {
    const size = ext.request_size();
    if (size == 0) return &.{};
    const buf = try gpa.alloc(u8, size);
    var written: u32 = 0;
    try check(ext.request_read(buf.ptr, @intCast(buf.len), &written));
    return buf[0..written];
}

/// Hands one frame of the response to the host. error.ReceiverGone: nobody reads the response
/// any more (the HTTP client disconnected); stop working on it.
pub fn emit(frame: []const u8) error{ReceiverGone}!void {
    if (ext.emit(frame.ptr, @intCast(frame.len)) != 0) return error.ReceiverGone;
}

/// The host's message for the last import that failed; empty when it has none.
pub fn lastError(buf: []u8) []const u8 {
    var written: u32 = 0;
    const rc = ext.last_error(buf.ptr, @intCast(buf.len), &written);
    if (rc != 0) return "";
    return buf[0..written];
}

/// Calls `reader.read(buf, &written)` until the output fits, growing the buffer to the size
/// the host reports with TooLarge.
fn readAll(gpa: std.mem.Allocator, reader: anytype) (Error || error{OutOfMemory})![]u8 {
    var size: usize = 4096;
    while (true) {
        const buf = try gpa.alloc(u8, size);
        var written: u32 = 0;
        check(reader.read(buf, &written)) catch |err| switch (err) {
            error.TooLarge => {
                gpa.free(buf);
                if (written <= size) return error.RuntimeError; // the host must report a larger size
                size = written;
                continue;
            },
            else => {
                gpa.free(buf);
                return err;
            },
        };
        return buf[0..written];
    }
}
