import MoETensor

extension WeightMatrix {
    /// `apply` with the pass's resident arithmetic (`Workspace.residentActivations`): on AMX tiles with the
    /// activations split into two bf16 parts where the pass asks for it (bf16x2, q8) and the matrix takes them;
    /// an int8 matrix (`convert --resident int8`, `takesQ16`) with the activations in two int8 parts under any
    /// setting but fp32; with int8-quantised activations for a GGML matrix under q8 (`takesResidentQ8`); else the
    /// fp32 kernels. The packed activations live in the workspace until the product is done.
    func apply(_ x: UnsafePointer<Float>, tokens T: Int, into y: UnsafeMutablePointer<Float>, workspace ws: Workspace) {
        let mode = ws.residentActivations
        if mode != .fp32, takesQ16 {
            let mark = ws.mark()
            defer { ws.release(to: mark) }
            applyQ16(Q16Activations(x, tokens: T, cols: cols, memory: ws.floats(Q16Activations.floatsNeeded(tokens: T, cols: cols))),
                     into: y)
        } else if mode != .fp32, takesBF16Tiles {
            let mark = ws.mark()
            defer { ws.release(to: mark) }
            let tiles = BF16Tiles(x, tokens: T, cols: cols, memory: ws.halves(BF16Tiles.valuesNeeded(tokens: T, cols: cols)))
            applyBF16(tiles, into: y)
        } else if mode == .q8, takesResidentQ8 {
            let mark = ws.mark()
            defer { ws.release(to: mark) }
            applyQ8(Q8Activations(x, tokens: T, cols: cols, memory: ws.floats(Q8Activations.floatsNeeded(tokens: T, cols: cols)),
                                  forms: q8Forms), into: y)
        } else {
            apply(x, tokens: T, into: y)
        }
    }

    /// Whether a resident product takes int8 activations under `--resident-activations q8`: GGML blocks (a GGUF's)
    /// of a type that does (`GGMLType.quantisesResidentInputs`), with whole groups of 32 (`takesQ8`).
    var takesResidentQ8: Bool {
        if case .ggml(let type) = encoding { return type.quantisesResidentInputs && takesQ8 }
        return false
    }
}

/// `swiGLU` on AMX tiles: x split and packed once for gate and up (fused with SiLU per chunk of rows, as `swiGLU`
/// does), then silu(gate)·up packed for down. `scratch` holds 2·T·inter floats.
func swiGLUBF16(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, _ x: UnsafePointer<Float>, tokens T: Int,
                workspace ws: Workspace, scratch: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>) {
    let inter = gate.rows
    let g = scratch, u = scratch + T * inter  // [T, inter] each
    let mark = ws.mark()
    defer { ws.release(to: mark) }
    let packed = ws.halves(BF16Tiles.valuesNeeded(tokens: T, cols: max(gate.cols, inter)))
    let xt = BF16Tiles(x, tokens: T, cols: gate.cols, memory: packed)
    gate.splitRows(tile: WeightMatrix.amxTileRows) { rows in
        gate.gemmBF16(rows: rows, xt, into: g)
        up.gemmBF16(rows: rows, xt, into: u)
        gateRows(rows, tokens: T, inter: inter, g, u)
    }
    down.applyBF16(BF16Tiles(g, tokens: T, cols: inter, memory: packed), into: out)
}
