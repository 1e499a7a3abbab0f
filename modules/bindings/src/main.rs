//! `mecha-mod-bindings`: the bindings module process, started by `mechad`.

fn main() -> std::process::ExitCode {
    mecha_module::run::<mecha_mod_bindings::BindingsModule>()
}
