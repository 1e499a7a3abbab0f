//! `mecha-mod-state`: the state module process, started by `mechad`.

fn main() -> std::process::ExitCode {
    mecha_module::run::<mecha_mod_state::StateModule>()
}
