//! `mecha-mod-invoke`: the service-invocation module process, started by `mechad`.

fn main() -> std::process::ExitCode {
    mecha_module::run::<mecha_mod_invoke::InvokeModule>()
}
