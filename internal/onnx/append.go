package onnx

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
)

// Append grafts g onto an existing model and returns the new model: g's
// nodes read tensors of the model by name, g's initializers are added, and
// the graph's outputs become the tensors named in keep (each a graph output
// or a node output of the model) followed by g.Outputs. g.Inputs is
// ignored: the model's inputs stay.
//
// Nodes and initializers that no longer contribute to an output are
// dropped, so the model's old head goes and its output names are free for
// g's. A node holding subgraphs (If, Loop, Scan) reads, besides its inputs,
// every outer tensor its subgraphs read, so what they read is kept.
//
// Append fails when a tensor g defines is already defined in the kept
// model, when a tensor g reads is not there, when the model's
// default-domain opset is older than 7 (g's element-wise nodes broadcast),
// or when the model made is past MaxInline (protobuf's limit: ONNX
// Runtime would not load it).
func Append(model []byte, keep []string, g *Graph) ([]byte, error) {
	m, err := parseModel(model)
	if err != nil {
		return nil, err
	}
	if m.opset != 0 && m.opset < 7 {
		return nil, fmt.Errorf("onnx: append: the model's opset %d is older than 7", m.opset)
	}

	// What g defines and what it reads from the model.
	defined := map[string]bool{}
	for _, t := range g.Initializers {
		defined[t.Name] = true
	}
	var reads []string
	for _, n := range g.Nodes {
		ins := n.Inputs
		for _, name := range sortedKeys(n.Attrs) {
			if sub, ok := n.Attrs[name].(*Graph); ok && sub != nil {
				// What a subgraph of g reads from outside it.
				b, err := sub.graphProto()
				if err != nil {
					return nil, err
				}
				pg, err := parseGraph(b, 0)
				if err != nil {
					return nil, err
				}
				ins = slices.Concat(ins, pg.outerReads())
			}
		}
		for _, in := range ins {
			if in != "" && !defined[in] {
				reads = append(reads, in)
			}
		}
		for _, out := range n.Outputs {
			defined[out] = true
		}
	}

	// Keep the nodes that compute keep and reads, from each needed tensor
	// to its producer: in no order of the nodes, as ONNX Runtime sorts a
	// graph itself and runs one listed out of order (a graph-surgeon edit).
	producer := map[string]int{}
	for i, n := range m.nodes {
		for _, o := range n.outputs {
			producer[o] = i
		}
	}
	needed := map[string]bool{}
	keepNode := make([]bool, len(m.nodes))
	work := slices.Concat(keep, reads)
	for len(work) > 0 {
		name := work[len(work)-1]
		work = work[:len(work)-1]
		if name == "" || needed[name] { // "" is an optional input left out
			continue
		}
		needed[name] = true
		if i, ok := producer[name]; ok && !keepNode[i] {
			keepNode[i] = true
			work = append(work, m.nodes[i].inputs...)
			work = append(work, m.nodes[i].outer...)
		}
	}
	available := map[string]bool{}
	for _, in := range m.inputs {
		// An initializer listed as an input (as before IR 4) is there
		// only if needed, below: the old head's weights go.
		if !in.init {
			available[in.name] = true
		}
	}
	for _, t := range m.inits {
		if needed[t.name] {
			available[t.name] = true
		}
	}
	for _, s := range m.sparseNames {
		available[s] = true
	}
	nodeNames := map[string]bool{}
	for i, n := range m.nodes {
		if keepNode[i] {
			for _, o := range n.outputs {
				available[o] = true
			}
			nodeNames[n.name] = true
		}
	}
	for _, name := range slices.Concat(keep, reads) {
		if !available[name] {
			return nil, fmt.Errorf("onnx: append: the model has no tensor %q", name)
		}
	}
	for i, n := range m.nodes {
		for _, in := range slices.Concat(n.inputs, n.outer) {
			if keepNode[i] && in != "" && !available[in] {
				return nil, fmt.Errorf("onnx: append: node %q reads %q, which nothing in the model defines", n.name, in)
			}
		}
	}
	for _, name := range slices.Sorted(mapKeys(defined)) {
		if available[name] {
			return nil, fmt.Errorf("onnx: append: tensor %q is already defined in the model", name)
		}
	}

	// Rebuild the graph.
	var gb []byte
	for i, n := range m.nodes {
		if keepNode[i] {
			gb = appendMessage(gb, 1, n.raw)
		}
	}
	for i, n := range g.Nodes {
		name := fmt.Sprintf("dcd_append/%s_%d", n.Op, i)
		for nodeNames[name] {
			name += "_"
		}
		nb, err := marshalNamedNode(n, name)
		if err != nil {
			return nil, err
		}
		gb = appendMessage(gb, 1, nb)
	}
	if m.name != "" {
		gb = appendString(gb, 2, m.name)
	}
	for _, t := range m.inits {
		if available[t.name] {
			gb = appendMessage(gb, 5, t.raw)
		}
	}
	for _, t := range g.Initializers {
		gb = appendMessage(gb, 5, marshalTensor(t))
	}
	for _, in := range m.inputs {
		// Before IR 4 initializers are listed as inputs too; the model
		// becomes IR 4 (below), where an initializer need not be, and one
		// that is may be fed instead, which keeps ONNX Runtime from folding
		// it into the nodes that read it. From IR 4 on, the input of an
		// initializer that stays, stays.
		if in.init && (m.ir < 4 || !available[in.name]) {
			continue
		}
		gb = appendMessage(gb, 11, in.raw)
	}
	for _, name := range keep {
		if raw, ok := m.outputs[name]; ok {
			gb = appendMessage(gb, 12, raw)
		} else {
			gb = appendMessage(gb, 12, marshalUntypedFloat(name))
		}
	}
	for _, v := range g.Outputs {
		gb = appendMessage(gb, 12, marshalValue(v))
	}
	for _, vi := range m.valueInfo {
		if available[vi.name] {
			gb = appendMessage(gb, 13, vi.raw)
		}
	}
	gb = append(gb, m.graphRest...)

	var out []byte
	for _, f := range m.fields {
		switch {
		case f.num == 7:
			out = appendMessage(out, 7, gb)
		case f.num == 1 && m.ir < 4:
			out = protowire.AppendTag(out, 1, protowire.VarintType)
			out = protowire.AppendVarint(out, 4)
		case f.num == 14 && g.Metadata != nil: // metadata_props, replaced below
		default:
			out = append(out, f.raw...)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(g.Metadata)) {
		var entry []byte // StringStringEntryProto
		entry = appendString(entry, 1, k)
		entry = appendString(entry, 2, g.Metadata[k])
		out = appendMessage(out, 14, entry)
	}
	if len(out) > MaxInline {
		return nil, fmt.Errorf("onnx: append: the model made is %d bytes, past the %d a model read whole may hold", len(out), MaxInline)
	}
	return out, nil
}

func mapKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// parsedModel is the parts of a ModelProto that Append edits; every other
// field is kept byte for byte.
type parsedModel struct {
	fields []rawField // top-level fields in order
	ir     uint64
	opset  uint64 // default domain; 0 when not declared
	parsedGraph
}

// parsedGraph is a GraphProto's parts, each kept as its bytes.
type parsedGraph struct {
	name      string
	nodes     []parsedNode
	inits     []namedRaw
	inputs    []namedRaw
	outputs   map[string][]byte
	valueInfo []namedRaw
	// sparseNames are the sparse initializers' names; graphRest holds
	// the graph's other fields (sparse initializers, doc string, …).
	sparseNames []string
	graphRest   []byte
}

type rawField struct {
	num protowire.Number
	raw []byte // the whole field, tag included
}

type namedRaw struct {
	name string
	raw  []byte // the message, without tag
	init bool   // an input that is also an initializer
}

type parsedNode struct {
	name            string
	inputs, outputs []string
	outer           []string // what its subgraphs read from the graphs around them
	raw             []byte
}

var errNotModel = errors.New("onnx: append: not an ONNX model")

func parseModel(model []byte) (*parsedModel, error) {
	m := &parsedModel{}
	var graph []byte
	err := walkFields(model, func(num protowire.Number, typ protowire.Type, v []byte, raw []byte) error {
		m.fields = append(m.fields, rawField{num, raw})
		switch {
		case num == 1 && typ == protowire.VarintType:
			m.ir, _ = protowire.ConsumeVarint(v)
		case num == 7 && typ == protowire.BytesType:
			graph = v
		case num == 8 && typ == protowire.BytesType:
			var domain string
			var version uint64
			walkFields(v, func(n protowire.Number, t protowire.Type, v, _ []byte) error {
				if n == 1 && t == protowire.BytesType {
					domain = string(v)
				}
				if n == 2 && t == protowire.VarintType {
					version, _ = protowire.ConsumeVarint(v)
				}
				return nil
			})
			if domain == "" || domain == "ai.onnx" {
				m.opset = version
			}
		}
		return nil
	})
	if err != nil || graph == nil {
		return nil, errNotModel
	}
	g, err := parseGraph(graph, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNotModel, err)
	}
	m.parsedGraph = *g
	return m, nil
}

// maxGraphDepth bounds how deep subgraphs nest (protobuf's own limit on
// nested messages), so that a crafted model cannot recurse the parser
// through the stack.
const maxGraphDepth = 100

// parseGraph parses a GraphProto, depth subgraphs deep.
func parseGraph(graph []byte, depth int) (*parsedGraph, error) {
	if depth > maxGraphDepth {
		return nil, fmt.Errorf("onnx: subgraphs nested more than %d deep", maxGraphDepth)
	}
	g := &parsedGraph{outputs: map[string][]byte{}}
	inits := map[string]bool{}
	err := walkFields(graph, func(num protowire.Number, typ protowire.Type, v []byte, raw []byte) error {
		if typ != protowire.BytesType {
			g.graphRest = append(g.graphRest, raw...)
			return nil
		}
		switch num {
		case 1:
			n, err := parseNode(v, depth)
			if err != nil {
				return err
			}
			g.nodes = append(g.nodes, n)
		case 2:
			g.name = string(v)
		case 5:
			name, err := nameField(v, 8)
			if err != nil {
				return err
			}
			g.inits = append(g.inits, namedRaw{name: name, raw: v})
			inits[name] = true
		case 11, 12, 13:
			name, err := nameField(v, 1)
			if err != nil {
				return err
			}
			switch num {
			case 11:
				g.inputs = append(g.inputs, namedRaw{name: name, raw: v})
			case 12:
				g.outputs[name] = v
			case 13:
				g.valueInfo = append(g.valueInfo, namedRaw{name: name, raw: v})
			}
		case 15:
			// SparseTensorProto: its values tensor carries the name.
			walkFields(v, func(n protowire.Number, t protowire.Type, vv, _ []byte) error {
				if n == 1 && t == protowire.BytesType {
					if name, err := nameField(vv, 8); err == nil {
						g.sparseNames = append(g.sparseNames, name)
					}
				}
				return nil
			})
			g.graphRest = append(g.graphRest, raw...)
		default:
			g.graphRest = append(g.graphRest, raw...)
		}
		return nil
	})
	for i := range g.inputs {
		g.inputs[i].init = inits[g.inputs[i].name]
	}
	return g, err
}

// outerReads returns the tensors g reads that it does not define itself:
// its nodes' inputs, and what their own subgraphs read, less its inputs,
// initializers and node outputs. ONNX names are unique across scopes, so
// the order of definitions does not matter.
func (g *parsedGraph) outerReads() []string {
	defined := map[string]bool{}
	for _, t := range slices.Concat(g.inits, g.inputs) {
		defined[t.name] = true
	}
	for _, name := range g.sparseNames {
		defined[name] = true
	}
	for _, n := range g.nodes {
		for _, o := range n.outputs {
			defined[o] = true
		}
	}
	var outer []string
	for _, n := range g.nodes {
		for _, r := range slices.Concat(n.inputs, n.outer) {
			if r != "" && !defined[r] {
				outer = append(outer, r)
				defined[r] = true // listed once
			}
		}
	}
	return outer
}

// parseNode parses a NodeProto of a graph depth subgraphs deep.
func parseNode(v []byte, depth int) (parsedNode, error) {
	var n parsedNode
	n.raw = v
	err := walkFields(v, func(num protowire.Number, typ protowire.Type, f []byte, _ []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 1:
			n.inputs = append(n.inputs, string(f))
		case 2:
			n.outputs = append(n.outputs, string(f))
		case 3:
			n.name = string(f)
		case 5:
			// AttributeProto: g (6) and graphs (11) are subgraphs.
			return walkFields(f, func(an protowire.Number, at protowire.Type, g []byte, _ []byte) error {
				if (an == 6 || an == 11) && at == protowire.BytesType {
					sub, err := parseGraph(g, depth+1)
					if err != nil {
						return err
					}
					n.outer = append(n.outer, sub.outerReads()...)
				}
				return nil
			})
		}
		return nil
	})
	return n, err
}

// Metadata returns a model's metadata_props, as ONNX Runtime's
// custom_metadata_map gives them.
func Metadata(model []byte) (map[string]string, error) {
	meta := map[string]string{}
	err := walkFields(model, func(num protowire.Number, typ protowire.Type, v []byte, _ []byte) error {
		if num != 14 || typ != protowire.BytesType {
			return nil
		}
		key, err := nameField(v, 1)
		if err != nil {
			return err
		}
		meta[key], err = nameField(v, 2)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("onnx: metadata: not an ONNX model: %w", err)
	}
	return meta, nil
}

func nameField(msg []byte, field protowire.Number) (string, error) {
	var name string
	err := walkFields(msg, func(num protowire.Number, typ protowire.Type, v []byte, _ []byte) error {
		if num == field && typ == protowire.BytesType {
			name = string(v)
		}
		return nil
	})
	return name, err
}

// walkFields calls fn for each field of a message with its value (for
// bytes fields, the payload; for others, the encoded value) and the whole
// field's bytes.
func walkFields(msg []byte, fn func(num protowire.Number, typ protowire.Type, v []byte, raw []byte) error) error {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, msg[n:])
		if m < 0 {
			return protowire.ParseError(m)
		}
		v := msg[n : n+m]
		if typ == protowire.BytesType {
			b, k := protowire.ConsumeBytes(v)
			if k < 0 {
				return protowire.ParseError(k)
			}
			v = b
		}
		if err := fn(num, typ, v, msg[:n+m]); err != nil {
			return err
		}
		msg = msg[n+m:]
	}
	return nil
}

func appendMessage(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

// marshalNamedNode is marshalNode with a given node name.
func marshalNamedNode(n Node, name string) ([]byte, error) {
	var b []byte
	for _, in := range n.Inputs {
		b = appendString(b, 1, in)
	}
	for _, out := range n.Outputs {
		b = appendString(b, 2, out)
	}
	b = appendString(b, 3, name)
	b = appendString(b, 4, n.Op)
	for _, k := range sortedKeys(n.Attrs) {
		ab, err := marshalAttr(k, n.Attrs[k])
		if err != nil {
			return nil, fmt.Errorf("onnx: node %s: %w", name, err)
		}
		b = appendMessage(b, 5, ab)
	}
	return b, nil
}

// marshalUntypedFloat declares a float tensor output of unknown shape.
func marshalUntypedFloat(name string) []byte {
	var tt []byte
	tt = protowire.AppendTag(tt, 1, protowire.VarintType)
	tt = protowire.AppendVarint(tt, Float)
	b := appendString(nil, 1, name)
	return appendMessage(b, 2, appendMessage(nil, 1, tt))
}
