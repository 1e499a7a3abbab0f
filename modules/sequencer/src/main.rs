//! `mecha-mod-sequencer`: the sequencer module process, started by `mechad`.

fn main() -> std::process::ExitCode {
    mecha_module::run::<mecha_mod_sequencer::SequencerModule>()
}
