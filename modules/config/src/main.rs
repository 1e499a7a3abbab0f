//! `mecha-mod-config`: the configuration module process, started by `mechad`.

fn main() -> std::process::ExitCode {
    mecha_module::run::<mecha_mod_config::ConfigModule>()
}
