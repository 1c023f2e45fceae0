package onnx

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// NodeOutput is a tensor computed by a node of a model's main graph.
type NodeOutput struct {
	Name string
	Op   string // the producing node's op_type
}

// graphIndex is what ExposeOutputs reads from a model: the main graph's
// node outputs in graph (topological) order, and every name already in use.
type graphIndex struct {
	produced []NodeOutput
	outputs  []string // graph outputs
	taken    map[string]bool
}

// ErrNotModel is returned by ExposeOutputs and NodeOutputs when the bytes
// are not an ONNX ModelProto with a graph.
var ErrNotModel = errors.New("onnx: not an ONNX model")

// MissingTensorError is returned by ExposeOutputs when a requested tensor is
// neither a graph output nor the output of a node of the main graph.
type MissingTensorError struct {
	Tensor string
	// Candidates are node outputs the caller may have meant: names that
	// contain the requested one (case-insensitively), then the outputs of
	// the last nodes of the graph, where a classifier's penultimate layer is.
	Candidates []NodeOutput
}

func (e *MissingTensorError) Error() string {
	return fmt.Sprintf("onnx: the graph has no tensor %q (node outputs near the end: %s)", e.Tensor, FormatOutputs(e.Candidates))
}

// FormatOutputs lists node outputs as `"name" (Op)`, comma-separated.
func FormatOutputs(outs []NodeOutput) string {
	var s []string
	for _, o := range outs {
		s = append(s, fmt.Sprintf("%q (%s)", o.Name, o.Op))
	}
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// ExposeSuffix ends the name of each graph output that ExposeOutputs adds.
const ExposeSuffix = "_dcd_flat"

// ExposeOutputs returns model rewritten so that every one of tensors can be
// fetched by ONNX Runtime, which returns only graph outputs. names[i] is the
// graph output to fetch for tensors[i]: tensors[i] itself when it already is
// a graph output, otherwise a new output computed by an added
// Flatten(axis=1) node from that tensor, so an inner [N,C,1,1] pooling
// result comes out as [N,C]. When nothing needs exposing, model is returned
// unchanged (the same slice).
//
// The rewrite appends nodes and outputs to the main graph's repeated fields
// in the protobuf wire format; every other byte of the model is kept, so
// the rewritten model is deterministic in (model, tensors).
//
// A tensor that is neither a graph output nor a node output of the main
// graph (graph inputs, initializers and subgraph tensors cannot be exposed)
// gives a *MissingTensorError.
func ExposeOutputs(model []byte, tensors []string) (out []byte, names []string, err error) {
	idx, err := index(model)
	if err != nil {
		return nil, nil, err
	}
	names = make([]string, len(tensors))
	var add []byte // GraphProto fields to append
	exposed := map[string]string{}
	for i, t := range tensors {
		if slices.Contains(idx.outputs, t) {
			names[i] = t
			continue
		}
		if n, ok := exposed[t]; ok {
			names[i] = n
			continue
		}
		if t == "" || !slices.ContainsFunc(idx.produced, func(o NodeOutput) bool { return o.Name == t }) {
			return nil, nil, &MissingTensorError{Tensor: t, Candidates: idx.candidates(t, 8)}
		}
		flat := idx.fresh(t + ExposeSuffix)
		node := marshalExposeNode(t, flat, idx.fresh("dcd_expose_"+t))
		add = protowire.AppendTag(add, 1, protowire.BytesType)
		add = protowire.AppendBytes(add, node)
		// The output's type is left to ONNX Runtime's type inference, so a
		// float16 or float64 tensor loads as what it is; the embedding
		// pipeline then says it wants float32.
		add = protowire.AppendTag(add, 12, protowire.BytesType)
		add = protowire.AppendBytes(add, appendString(nil, 1, flat))
		exposed[t], names[i] = flat, flat
	}
	if len(add) == 0 {
		return model, names, nil
	}
	return appendToGraph(model, add), names, nil
}

// NodeOutputs lists the outputs of the main graph's nodes in graph order.
func NodeOutputs(model []byte) ([]NodeOutput, error) {
	idx, err := index(model)
	if err != nil {
		return nil, err
	}
	return idx.produced, nil
}

func marshalExposeNode(in, out, name string) []byte {
	b := appendString(nil, 1, in)
	b = appendString(b, 2, out)
	b = appendString(b, 3, name)
	b = appendString(b, 4, "Flatten")
	ab, _ := marshalAttr("axis", 1) // int is a supported attribute type
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	return protowire.AppendBytes(b, ab)
}

// fresh returns name, or name with a numeric suffix, unused in the graph,
// and marks it used.
func (g *graphIndex) fresh(name string) string {
	n := name
	for i := 2; g.taken[n]; i++ {
		n = fmt.Sprintf("%s_%d", name, i)
	}
	g.taken[n] = true
	return n
}

// candidates picks up to max node outputs the user may have meant.
func (g *graphIndex) candidates(want string, max int) []NodeOutput {
	var c []NodeOutput
	seen := map[string]bool{}
	lw := strings.ToLower(want)
	for _, o := range g.produced {
		if len(c) < max/2 && lw != "" && strings.Contains(strings.ToLower(o.Name), lw) {
			c = append(c, o)
			seen[o.Name] = true
		}
	}
	var tail []NodeOutput
	for i := len(g.produced) - 1; i >= 0 && len(c)+len(tail) < max; i-- {
		if o := g.produced[i]; !seen[o.Name] {
			tail = append(tail, o)
		}
	}
	slices.Reverse(tail)
	return append(c, tail...)
}

// index reads the main graph of a ModelProto (graph = field 7). A graph
// field that occurs more than once is merged, as protobuf parsers do.
func index(model []byte) (*graphIndex, error) {
	g := &graphIndex{taken: map[string]bool{}}
	found := false
	err := eachField(model, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num != 7 || typ != protowire.BytesType {
			return nil
		}
		found = true
		return eachField(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
			if typ != protowire.BytesType {
				return nil
			}
			switch num {
			case 1: // node
				return g.addNode(v)
			case 5: // initializer: TensorProto.name = 8
				return g.takeName(v, 8)
			case 11, 13: // input, value_info: ValueInfoProto.name = 1
				return g.takeName(v, 1)
			case 12: // output
				name, err := stringField(v, 1)
				if err != nil {
					return err
				}
				g.outputs = append(g.outputs, name)
				g.taken[name] = true
			}
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotModel, err)
	}
	if !found {
		return nil, fmt.Errorf("%w: no graph", ErrNotModel)
	}
	return g, nil
}

func (g *graphIndex) addNode(v []byte) error {
	var outs []string
	var op, name string
	err := eachField(v, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if typ != protowire.BytesType {
			return nil
		}
		switch num {
		case 2:
			outs = append(outs, string(v))
		case 3:
			name = string(v)
		case 4:
			op = string(v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	g.taken[name] = true
	for _, o := range outs {
		if o != "" { // an omitted optional output
			g.produced = append(g.produced, NodeOutput{Name: o, Op: op})
			g.taken[o] = true
		}
	}
	return nil
}

func (g *graphIndex) takeName(v []byte, field protowire.Number) error {
	name, err := stringField(v, field)
	g.taken[name] = true
	return err
}

// stringField returns the last value of a string field of a message.
func stringField(msg []byte, field protowire.Number) (string, error) {
	var s string
	err := eachField(msg, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num == field && typ == protowire.BytesType {
			s = string(v)
		}
		return nil
	})
	return s, err
}

// eachField calls fn for every field of a message; v is the payload of a
// length-delimited field and nil otherwise.
func eachField(msg []byte, fn func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return protowire.ParseError(n)
		}
		msg = msg[n:]
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(msg)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, msg)
		}
		if n < 0 {
			return protowire.ParseError(n)
		}
		msg = msg[n:]
		if err := fn(num, typ, v); err != nil {
			return err
		}
	}
	return nil
}

// appendToGraph returns a copy of model whose graph (field 7) has add
// appended. Every other field is copied as it was, in order; several graph
// fields are merged into one at the first one's place.
func appendToGraph(model, add []byte) []byte {
	var graph []byte
	_ = eachField(model, func(num protowire.Number, typ protowire.Type, v []byte) error {
		if num == 7 && typ == protowire.BytesType {
			graph = append(graph, v...)
		}
		return nil
	})
	graph = append(graph, add...)
	out := make([]byte, 0, len(model)+len(add)+16)
	written := false
	for rest := model; len(rest) > 0; {
		num, typ, n := protowire.ConsumeTag(rest)
		m := protowire.ConsumeFieldValue(num, typ, rest[n:])
		field := rest[:n+m]
		rest = rest[n+m:]
		if num == 7 && typ == protowire.BytesType {
			if !written {
				out = protowire.AppendTag(out, 7, protowire.BytesType)
				out = protowire.AppendBytes(out, graph)
				written = true
			}
			continue
		}
		out = append(out, field...)
	}
	return out
}
