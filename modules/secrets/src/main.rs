//! `mecha-mod-secrets`: the secrets module process, started by `mechad`.

fn main() -> std::process::ExitCode {
    mecha_module::run::<mecha_mod_secrets::SecretsModule>()
}
