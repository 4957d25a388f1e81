//! Runs the programs in `examples/` (our versions of the seed examples) on the
//! default model. The verbatim seed examples run as doctests of `seed_examples`.

mod save_and_load {
    include!("../examples/save_and_load.rs");
    pub fn run() {
        main()
    }
}
mod history {
    include!("../examples/history.rs");
    pub fn run() {
        main()
    }
}
mod clone {
    include!("../examples/clone.rs");
    pub fn run() {
        main()
    }
}

#[test]
fn example_save_and_load_runs() {
    save_and_load::run();
}

#[test]
fn example_history_runs() {
    history::run();
}

#[test]
fn example_clone_runs() {
    clone::run();
}
