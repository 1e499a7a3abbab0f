//! `mecha-mod-pubsub`: the pubsub module process, started by `mechad`.

fn main() -> std::process::ExitCode {
    mecha_module::run::<mecha_mod_pubsub::PubsubModule>()
}
