//! `validate`, `show`, `schema`, `render`, `init`: gantry.toml, read or written.

use gantry_core::{init, render, show, validate};

use super::Context;
use crate::Failure;
use crate::args::{InitArgs, RenderArgs, RenderTarget};
use crate::text;

pub(super) fn validate(ctx: &Context<'_>) -> Result<(), Failure> {
    ctx.emit(validate::validate(&ctx.project, ctx.env)?)
}

pub(super) fn show(ctx: &Context<'_>) -> Result<(), Failure> {
    let stored = super::secrets::stored_names(&ctx.project, ctx.env);
    let is_set = |name: &str| stored.iter().any(|s| s == name) || std::env::var_os(name).is_some();
    ctx.emit(show::show(&ctx.project, ctx.env, &is_set)?)
}

pub(super) fn schema(ctx: &Context<'_>) -> Result<(), Failure> {
    ctx.emit(text::Schema(gantry_core::schema()))
}

pub(super) fn render(ctx: &Context<'_>, args: &RenderArgs) -> Result<(), Failure> {
    let target = match args.target {
        RenderTarget::Compose => render::Target::Compose,
        RenderTarget::Systemd => render::Target::Systemd,
    };
    let out = ctx.absolute(&args.out);
    ctx.emit(render::render_to(&ctx.project, ctx.env, target, &out)?)
}

pub(super) fn init(ctx: &Context<'_>, args: &InitArgs) -> Result<(), Failure> {
    let dir = ctx.absolute(&args.dir);
    ctx.emit(init::init(&dir, args.name.as_deref(), args.force)?)
}
