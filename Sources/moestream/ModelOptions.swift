import ArgumentParser
import MoECheckpoint
import MoEExpertStore
import MoEModel

/// Where the model comes from: an expert store (made by `moestream convert`) or a Hugging Face checkpoint
/// directory (config.json + safetensors), told apart by the store's manifest.
struct ModelOptions: ParsableArguments {
    @Argument(help: "An expert store, or a checkpoint directory (config.json and safetensors shards).")
    var model: String

    var isStore: Bool { ExpertStore.isStore(model) }

    func load() throws -> KimiModel {
        do {
            if isStore { return try ExpertStore(path: model).loadModel() }
            return try KimiModel.load(checkpoint: model)
        } catch let e as StoreError { throw CLIError(e.description) } catch let e as CheckpointError {
            throw CLIError(e.description)
        }
    }
}

/// An error the CLI prints as one line and exits non-zero.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}
