//! Builds the guest: `python -m ziglang build` (build.sh does) → zig-out/bin/llama-host-guest.wasm.
//! `python -m ziglang build test` runs the native unit tests (the Jinja interpreter and the
//! tool-call parser need no host; tests/test_tools.py runs them).
const std = @import("std");

pub fn build(b: *std.Build) void {
    const target = b.resolveTargetQuery(.{ .cpu_arch = .wasm32, .os_tag = .wasi });
    // ReleaseSafe: a bug traps (and fails one request) instead of corrupting memory.
    const optimize = b.option(std.builtin.OptimizeMode, "optimize", "default ReleaseSafe") orelse .ReleaseSafe;
    const exe = b.addExecutable(.{
        .name = "llama-host-guest",
        .root_source_file = b.path("src/main.zig"),
        .target = target,
        .optimize = optimize,
    });
    exe.stack_size = 8 << 20; // template evaluation recurses; its depth is limited in jinja.Limits
    b.installArtifact(exe);

    const step = b.step("test", "Run the guest's native unit tests");
    for ([_][]const u8{ "src/jinja.zig", "src/toolcall.zig" }) |root| {
        const tests = b.addTest(.{ .root_source_file = b.path(root), .target = b.graph.host });
        step.dependOn(&b.addRunArtifact(tests).step);
    }
}
