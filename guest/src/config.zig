//! What the host tells the guest about the server (argv[2], JSON): the models it serves, their
//! templates, and the server's default generation settings.
const std = @import("std");

pub const Model = struct {
    /// The public id a request's `model` names.
    id: []const u8,
    /// The `--nn-preload` name it loads (load_by_name).
    preload: []const u8,
    /// A name in /templates (without .jinja), or "auto": the GGUF's own chat template.
    template: []const u8 = "auto",
    /// Template text given inline (a `.jinja` path on the host's command line); wins over `template`.
    template_source: ?[]const u8 = null,
};

pub const Config = struct {
    models: []const Model = &.{},
    /// WASI-NN metadata applied under every request's own settings (server-wide defaults).
    defaults: ?std.json.Value = null,
    system_fingerprint: []const u8 = "llama-host",
    /// "deepseek": a chat answer's <think> block is its reasoning_content; "none": left in the content.
    reasoning_format: []const u8 = "deepseek",

    /// The model a request names; a request without `model` gets the first one.
    pub fn find(self: Config, id: ?[]const u8) ?*const Model {
        if (self.models.len == 0) return null;
        const want = id orelse return &self.models[0];
        for (self.models) |*m| {
            if (std.mem.eql(u8, m.id, want)) return m;
        }
        return null;
    }
};

pub fn parse(gpa: std.mem.Allocator, text: []const u8) !Config {
    return std.json.parseFromSliceLeaky(Config, gpa, text, .{ .ignore_unknown_fields = true, .allocate = .alloc_always });
}
