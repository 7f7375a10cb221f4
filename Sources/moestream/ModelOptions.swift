import ArgumentParser
import MoECheckpoint
import MoEModel

/// Where the model comes from: a Hugging Face checkpoint directory (config.json + safetensors).
struct ModelOptions: ParsableArguments {
    @Argument(help: "A checkpoint directory (config.json and safetensors shards).")
    var model: String

    func load() throws -> KimiModel {
        do { return try KimiModel.load(checkpoint: model) } catch { throw CLIError(error.description) }
    }
}

/// An error the CLI prints as one line and exits non-zero.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}
