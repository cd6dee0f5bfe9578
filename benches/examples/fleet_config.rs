//! Prints the bench fleet's config for `N` backends, to run the `nexus` tool on it:
//! `cargo run -p nexus-benches --example fleet_config -- 1000 > fleet.toml`

fn main() -> Result<(), std::num::ParseIntError> {
    let backends: usize = std::env::args().nth(1).map_or(Ok(100), |a| a.parse())?;
    print!("{}", nexus_benches::fleet_config(backends));
    Ok(())
}
