// Package onnx builds and edits ONNX model files without a protobuf code generator.
//
// DCD makes its own small graphs (the demo backbone and head, the k-NN
// distance+top-k kernel) and must expose an inner node of a user's model as a
// graph output, because ONNX Runtime only returns graph outputs. Both need only
// a handful of ONNX message fields, so they are written and patched directly in
// the protobuf wire format (google.golang.org/protobuf/encoding/protowire)
// rather than pulling in generated code for the whole ONNX schema.
//
// Field numbers follow onnx/onnx.proto (IR version 8, opset 17).
package onnx

import (
	"fmt"
	"math"
	"slices"

	"google.golang.org/protobuf/encoding/protowire"
)

// Element types, as in onnx.TensorProto.DataType.
const (
	Float = 1
	Int64 = 7
)

// Opset is the default-domain opset the builder declares.
const Opset = 17

// Tensor is a constant (an initializer) of float32 or int64 values.
type Tensor struct {
	Name   string
	Dims   []int64
	Floats []float32
	Ints   []int64
}

// Node is one operator application. Attributes are given as Go values:
// int, int64, float32, []int64, string, Tensor, or *Graph for a subgraph
// (If's branches, Loop's body), which may read any tensor of the graphs
// around it by name.
type Node struct {
	Op      string
	Inputs  []string
	Outputs []string
	Attrs   map[string]any
}

// Value declares a graph input or output: its name, element type and shape,
// where a dimension < 0 is symbolic (named by DimNames, or "N").
type Value struct {
	Name     string
	Elem     int
	Shape    []int64
	DimNames []string
}

// Graph is a whole model: one graph in the default domain.
type Graph struct {
	Name         string
	Inputs       []Value
	Outputs      []Value
	Initializers []Tensor
	Nodes        []Node
	// Metadata, when set, is the model's metadata_props: Append puts it
	// in place of the model's own, which describe the head it drops.
	Metadata map[string]string
}

// Marshal encodes g as an ONNX ModelProto.
func (g *Graph) Marshal() ([]byte, error) {
	gb, err := g.graphProto()
	if err != nil {
		return nil, err
	}
	var m []byte
	m = protowire.AppendTag(m, 1, protowire.VarintType) // ir_version
	m = protowire.AppendVarint(m, 8)
	m = appendString(m, 2, "dcd") // producer_name
	m = protowire.AppendTag(m, 7, protowire.BytesType)
	m = protowire.AppendBytes(m, gb)
	var op []byte
	op = appendString(op, 1, "")
	op = protowire.AppendTag(op, 2, protowire.VarintType)
	op = protowire.AppendVarint(op, Opset)
	m = protowire.AppendTag(m, 8, protowire.BytesType) // opset_import
	m = protowire.AppendBytes(m, op)
	return m, nil
}

// graphProto encodes g as a GraphProto: its nodes, name, initializers,
// inputs and outputs.
func (g *Graph) graphProto() ([]byte, error) {
	var gb []byte
	for i, n := range g.Nodes {
		nb, err := marshalNode(n, i)
		if err != nil {
			return nil, err
		}
		gb = protowire.AppendTag(gb, 1, protowire.BytesType)
		gb = protowire.AppendBytes(gb, nb)
	}
	gb = appendString(gb, 2, g.Name)
	for _, t := range g.Initializers {
		gb = protowire.AppendTag(gb, 5, protowire.BytesType)
		gb = protowire.AppendBytes(gb, marshalTensor(t))
	}
	for _, v := range g.Inputs {
		gb = protowire.AppendTag(gb, 11, protowire.BytesType)
		gb = protowire.AppendBytes(gb, marshalValue(v))
	}
	for _, v := range g.Outputs {
		gb = protowire.AppendTag(gb, 12, protowire.BytesType)
		gb = protowire.AppendBytes(gb, marshalValue(v))
	}
	return gb, nil
}

func appendString(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func marshalNode(n Node, i int) ([]byte, error) {
	var b []byte
	for _, in := range n.Inputs {
		b = appendString(b, 1, in)
	}
	for _, out := range n.Outputs {
		b = appendString(b, 2, out)
	}
	b = appendString(b, 3, fmt.Sprintf("%s_%d", n.Op, i))
	b = appendString(b, 4, n.Op)
	for _, name := range sortedKeys(n.Attrs) {
		ab, err := marshalAttr(name, n.Attrs[name])
		if err != nil {
			return nil, fmt.Errorf("onnx: node %d (%s): %w", i, n.Op, err)
		}
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, ab)
	}
	return b, nil
}

// Attribute types, as in onnx.AttributeProto.AttributeType.
const (
	attrFloat  = 1
	attrInt    = 2
	attrString = 3
	attrTensor = 4
	attrGraph  = 5
	attrInts   = 7
)

func marshalAttr(name string, v any) ([]byte, error) {
	b := appendString(nil, 1, name)
	var typ uint64
	switch v := v.(type) {
	case float32:
		b = protowire.AppendTag(b, 2, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(v))
		typ = attrFloat
	case int:
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(int64(v)))
		typ = attrInt
	case int64:
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(v))
		typ = attrInt
	case string:
		b = appendString(b, 4, v)
		typ = attrString
	case Tensor:
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, marshalTensor(v))
		typ = attrTensor
	case *Graph:
		if v == nil {
			return nil, fmt.Errorf("attribute %q: a nil graph", name)
		}
		gb, err := v.graphProto()
		if err != nil {
			return nil, fmt.Errorf("attribute %q: %w", name, err)
		}
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = protowire.AppendBytes(b, gb)
		typ = attrGraph
	case []int64:
		for _, x := range v {
			b = protowire.AppendTag(b, 8, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(x))
		}
		typ = attrInts
	default:
		return nil, fmt.Errorf("attribute %q: unsupported type %T", name, v)
	}
	b = protowire.AppendTag(b, 20, protowire.VarintType)
	return protowire.AppendVarint(b, typ), nil
}

func marshalTensor(t Tensor) []byte {
	var b []byte
	for _, d := range t.Dims {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(d))
	}
	elem := Float
	// raw_data (little-endian) is what exporters write; it keeps large
	// initializers compact and fast to parse.
	var raw []byte
	if t.Ints != nil {
		elem = Int64
		raw = make([]byte, 0, 8*len(t.Ints))
		for _, x := range t.Ints {
			raw = protowire.AppendFixed64(raw, uint64(x))
		}
	} else {
		raw = make([]byte, 0, 4*len(t.Floats))
		for _, x := range t.Floats {
			raw = protowire.AppendFixed32(raw, math.Float32bits(x))
		}
	}
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(elem))
	b = appendString(b, 8, t.Name)
	b = protowire.AppendTag(b, 9, protowire.BytesType)
	return protowire.AppendBytes(b, raw)
}

func marshalValue(v Value) []byte {
	var shape []byte
	for i, d := range v.Shape {
		var dim []byte
		if d >= 0 {
			dim = protowire.AppendTag(dim, 1, protowire.VarintType)
			dim = protowire.AppendVarint(dim, uint64(d))
		} else {
			name := "N"
			if i < len(v.DimNames) && v.DimNames[i] != "" {
				name = v.DimNames[i]
			}
			dim = appendString(dim, 2, name)
		}
		shape = protowire.AppendTag(shape, 1, protowire.BytesType)
		shape = protowire.AppendBytes(shape, dim)
	}
	var tt []byte // TypeProto.Tensor
	tt = protowire.AppendTag(tt, 1, protowire.VarintType)
	tt = protowire.AppendVarint(tt, uint64(v.Elem))
	tt = protowire.AppendTag(tt, 2, protowire.BytesType)
	tt = protowire.AppendBytes(tt, shape)
	var typ []byte // TypeProto
	typ = protowire.AppendTag(typ, 1, protowire.BytesType)
	typ = protowire.AppendBytes(typ, tt)
	b := appendString(nil, 1, v.Name)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	return protowire.AppendBytes(b, typ)
}

// sortedKeys gives attributes a stable order, so the encoded model (and so
// its digest) is deterministic.
func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
