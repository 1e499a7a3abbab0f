//! `mecha-mod-dapr`: the Dapr personality's process, started by `mechad`.

fn main() -> std::process::ExitCode {
    mecha_module::run::<mecha_mod_dapr::DaprModule>()
}
