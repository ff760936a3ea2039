use std::path::Path;
#[test]
fn dump() {
    for entry in std::fs::read_dir("tests/fixtures/inventories/valid").unwrap().chain(std::fs::read_dir("tests/fixtures/inventories/invalid").unwrap()).chain(std::fs::read_dir("inventories").unwrap()) {
        let path = entry.unwrap().path();
        match cutover::inventory::load(&path) {
            Ok(_) => println!("{}: OK", path.display()),
            Err(e) => println!("{e}"),
        }
    }
}
