package onnx

import (
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
)

// MaxInline is the most bytes a model may hold with its external data read
// in: protobuf's limit on a message, which ONNX Runtime enforces.
const MaxInline = 1<<31 - 1

// ErrTooLarge is Inline's error for a model past MaxInline.
var ErrTooLarge = errors.New("onnx: the model with its external data is more than 2 GiB, protobuf's limit on a model loaded from memory, as DCD loads it (export it in float16, or a smaller variant)")

// Inline returns model with the data of every tensor stored outside it
// (external data, as PyTorch's exporter writes weights beside the model:
// model.onnx.data) read in, so that the model is one file ONNX Runtime
// loads from memory: its graph's initializers, and those of the graphs
// its nodes hold (If, Loop) and the tensors its nodes' attributes hold
// (Constant's), which onnx.save puts outside too. read returns the bytes
// of a location, a path relative to the model's folder. A model without
// external data comes back as it is. A model of more than MaxInline bytes
// then fails with ErrTooLarge.
func Inline(model []byte, read func(location string) ([]byte, error)) ([]byte, error) {
	external, declared, err := externalSize(model)
	switch {
	case errors.Is(err, errTooDeep):
		return nil, err
	case !external: // or not a model this reads: ONNX Runtime says why
		return model, nil
	}
	// What the tensors say they hold, checked before reading any: a
	// model over the limit fails at once, not after gigabytes of reads.
	if size := int64(len(model)) + declared; size > MaxInline {
		return nil, fmt.Errorf("%w: its tensors' external data alone are %d bytes", ErrTooLarge, declared)
	}
	files := map[string][]byte{}
	size := len(model)
	inline := func(v []byte) ([]byte, error) {
		t, err := inlineTensor(v, files, read)
		if err != nil {
			return nil, err
		}
		if size += len(t) - len(v); size > MaxInline {
			return nil, ErrTooLarge
		}
		return t, nil
	}
	// Room for the graph and the model once, so neither grows by copies:
	// at a model's size, each copy is that much more memory at once.
	out := make([]byte, 0, len(model)+int(declared)+64)
	err = walkFields(model, func(num protowire.Number, typ protowire.Type, v, raw []byte) error {
		k, ok := modelHolds[num]
		if !ok || typ != protowire.BytesType {
			out = append(out, raw...)
			return nil
		}
		room := len(v) // the graph holds the weights; a function, a few
		if num == 7 {
			room += int(declared)
		}
		m, err := rewriteTensors(make([]byte, 0, room), v, k, holds, inline)
		out = appendMessage(out, num, m)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// msgKind is a message of ONNX's that holds tensors, directly or in
// messages it holds.
type msgKind int

const (
	tensorMsg msgKind = iota
	graphMsg
	nodeMsg
	attributeMsg
	sparseMsg
	functionMsg
)

// modelHolds are the fields of a ModelProto that hold tensors: its graph,
// and its local functions (whose Constants onnx.save puts outside too).
var modelHolds = map[protowire.Number]msgKind{7: graphMsg, 25: functionMsg}

// holds are the fields of each kind that hold tensors, and the kind of
// message in each.
var holds = map[msgKind]map[protowire.Number]msgKind{
	graphMsg:     {5: tensorMsg, 1: nodeMsg, 15: sparseMsg},                                              // initializer, node, sparse_initializer
	nodeMsg:      {5: attributeMsg},                                                                      // attribute
	attributeMsg: {5: tensorMsg, 6: graphMsg, 10: tensorMsg, 11: graphMsg, 22: sparseMsg, 23: sparseMsg}, // t, g, tensors, graphs, sparse_tensor(s)
	sparseMsg:    {1: tensorMsg, 2: tensorMsg},                                                           // values, indices
	functionMsg:  {7: nodeMsg},                                                                           // node
}

// eachTensor calls fn with every TensorProto that msg, of kind k, holds.
func eachTensor(msg []byte, k msgKind, fn func(tensor []byte)) error {
	return eachTensorAt(msg, k, fn, 0)
}

// maxNesting bounds how deep the messages holding tensors nest: a graph
// in an attribute of a node of a graph is three levels a subgraph, and a
// crafted model of a million nested If branches would otherwise overflow
// the stack, a fatal error no recover catches.
const maxNesting = 3*maxGraphDepth + 8

var errTooDeep = fmt.Errorf("onnx: messages nested deeper than %d (subgraphs in subgraphs)", maxNesting)

func eachTensorAt(msg []byte, k msgKind, fn func(tensor []byte), depth int) error {
	if depth > maxNesting {
		return errTooDeep
	}
	return walkFields(msg, func(num protowire.Number, typ protowire.Type, v, _ []byte) error {
		child, ok := holds[k][num]
		switch {
		case !ok || typ != protowire.BytesType:
			return nil
		case child == tensorMsg:
			fn(v)
			return nil
		}
		return eachTensorAt(v, child, fn, depth+1)
	})
}

// rewriteTensors appends to b msg, of kind k, with every TensorProto it
// holds (where in says: holds) replaced by what fn makes of it.
func rewriteTensors(b, msg []byte, k msgKind, in map[msgKind]map[protowire.Number]msgKind, fn func(tensor []byte) ([]byte, error)) ([]byte, error) {
	return rewriteTensorsAt(b, msg, k, in, fn, 0)
}

func rewriteTensorsAt(b, msg []byte, k msgKind, in map[msgKind]map[protowire.Number]msgKind, fn func(tensor []byte) ([]byte, error), depth int) ([]byte, error) {
	if depth > maxNesting {
		return nil, errTooDeep
	}
	err := walkFields(msg, func(num protowire.Number, typ protowire.Type, v, raw []byte) error {
		child, ok := in[k][num]
		if !ok || typ != protowire.BytesType {
			b = append(b, raw...)
			return nil
		}
		var m []byte
		var err error
		if child == tensorMsg {
			m, err = fn(v)
		} else {
			m, err = rewriteTensorsAt(nil, v, child, in, fn, depth+1)
		}
		if err != nil {
			return err
		}
		b = appendMessage(b, num, m)
		return nil
	})
	return b, err
}

// externalSize says whether any tensor of model's graph keeps its data
// outside it, and how many bytes those that give their length hold
// (PyTorch's exporter gives every one's).
func externalSize(model []byte) (found bool, declared int64, err error) {
	err = walkFields(model, func(num protowire.Number, typ protowire.Type, v, _ []byte) error {
		if k, ok := modelHolds[num]; ok && typ == protowire.BytesType {
			return eachTensor(v, k, func(t []byte) {
				loc, _, length, _ := externalOf(t)
				found = found || loc != ""
				if loc != "" && length > 0 {
					// Capped past the limit: a length near 2^63 must
					// not wrap the sum below it.
					declared = min(declared+min(length, MaxInline), MaxInline+1)
				}
			})
		}
		return nil
	})
	return found, declared, err
}

// externalOf returns where a TensorProto's data is, if outside the model:
// its external_data's location, offset and length (-1: to the file's end).
func externalOf(tensor []byte) (location string, offset, length int64, err error) {
	length = -1
	external := false
	err = walkFields(tensor, func(num protowire.Number, typ protowire.Type, v, _ []byte) error {
		switch {
		case num == 14 && typ == protowire.VarintType: // data_location
			x, _ := protowire.ConsumeVarint(v)
			external = x == 1 // EXTERNAL
		case num == 13 && typ == protowire.BytesType: // external_data
			key, err := nameField(v, 1)
			if err != nil {
				return err
			}
			value, err := nameField(v, 2)
			if err != nil {
				return err
			}
			switch key {
			case "location":
				location = value
			case "offset", "length":
				n, err := strconv.ParseInt(value, 10, 64)
				if err != nil || n < 0 {
					return fmt.Errorf("onnx: external data %s %q", key, value)
				}
				if key == "offset" {
					offset = n
				} else {
					length = n
				}
			}
		}
		return nil
	})
	if !external {
		return "", 0, -1, err
	}
	if location == "" && err == nil {
		err = errors.New("onnx: a tensor's data is external but names no location")
	}
	return location, offset, length, err
}

// inlineTensor returns a TensorProto with its external data, if any, read
// in as raw_data; files holds the locations read so far.
func inlineTensor(tensor []byte, files map[string][]byte, read func(string) ([]byte, error)) ([]byte, error) {
	loc, offset, length, err := externalOf(tensor)
	if err != nil || loc == "" {
		return tensor, err
	}
	file, ok := files[loc]
	if !ok {
		if file, err = read(loc); err != nil {
			return nil, fmt.Errorf("onnx: external data %q: %w", loc, err)
		}
		files[loc] = file
	}
	if length < 0 {
		length = int64(len(file)) - offset
	}
	if offset > int64(len(file)) || length < 0 || length > int64(len(file))-offset {
		return nil, fmt.Errorf("onnx: external data %q holds %d bytes, not %d from %d", loc, len(file), length, offset)
	}
	var t []byte
	walkFields(tensor, func(num protowire.Number, _ protowire.Type, _, raw []byte) error {
		if num != 13 && num != 14 && num != 9 { // external_data, data_location, raw_data
			t = append(t, raw...)
		}
		return nil
	})
	t = protowire.AppendTag(t, 9, protowire.BytesType)
	return protowire.AppendBytes(t, file[offset:offset+length]), nil
}
