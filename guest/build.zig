//! Builds the guest: `python -m ziglang build` (build.sh does) → zig-out/bin/llama-host-guest.wasm.
//! `python -m ziglang build test` runs the native unit tests (the Jinja interpreter needs no host).
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

    const tests = b.addTest(.{
        .root_source_file = b.path("src/jinja.zig"),
        .target = b.graph.host,
    });
    const run_tests = b.addRunArtifact(tests);
    b.step("test", "Run the guest's native unit tests").dependOn(&run_tests.step);
}
