fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Use the vendored protoc so a build needs no system protobuf compiler.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto/raftmesh.proto");
    println!("cargo:rerun-if-changed=proto/log.proto");
    tonic_prost_build::configure().compile_protos(&["proto/raftmesh.proto"], &["proto"])?;
    // The log schema has no services; plain prost messages. Maps as
    // BTreeMap: a HashMap encodes its entries in a random order, so the same
    // membership entry would get different bytes on each encoding.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .btree_map(".")
        .compile_protos(&["proto/log.proto"], &["proto"])?;
    Ok(())
}
