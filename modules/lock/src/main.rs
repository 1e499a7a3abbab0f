//! `mecha-mod-lock`: the lock module process, started by `mechad`.

fn main() -> std::process::ExitCode {
    mecha_module::run::<mecha_mod_lock::LockModule>()
}
