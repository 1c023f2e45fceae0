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

// Inline returns model with the data of every initializer stored outside
// it (external data, as PyTorch's exporter writes weights beside the
// model: model.onnx.data) read in, so that the model is one file ONNX
// Runtime loads from memory; read returns the bytes of a location, a path
// relative to the model's folder. A model without external data comes back
// as it is. A model of more than MaxInline bytes then fails with
// ErrTooLarge.
func Inline(model []byte, read func(location string) ([]byte, error)) ([]byte, error) {
	external, declared := externalSize(model)
	if !external {
		return model, nil
	}
	// What the tensors say they hold, checked before reading any: a
	// model over the limit fails at once, not after gigabytes of reads.
	if size := int64(len(model)) + declared; size > MaxInline {
		return nil, fmt.Errorf("%w: its tensors' external data alone are %d bytes", ErrTooLarge, declared)
	}
	files := map[string][]byte{}
	size := len(model)
	// Room for the graph and the model once, so neither grows by copies:
	// at a model's size, each copy is that much more memory at once.
	out := make([]byte, 0, len(model)+int(declared)+64)
	err := walkFields(model, func(num protowire.Number, typ protowire.Type, v, raw []byte) error {
		if num != 7 || typ != protowire.BytesType { // ModelProto.graph
			out = append(out, raw...)
			return nil
		}
		graph := make([]byte, 0, len(v)+int(declared))
		err := walkFields(v, func(num protowire.Number, typ protowire.Type, v, raw []byte) error {
			if num != 5 || typ != protowire.BytesType { // GraphProto.initializer
				graph = append(graph, raw...)
				return nil
			}
			t, err := inlineTensor(v, files, read)
			if err != nil {
				return err
			}
			if size += len(t) - len(v); size > MaxInline {
				return ErrTooLarge
			}
			graph = appendMessage(graph, 5, t)
			return nil
		})
		out = appendMessage(out, 7, graph)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// externalSize says whether any initializer of model's graph keeps its
// data outside it, and how many bytes those that give their length hold
// (PyTorch's exporter gives every one's).
func externalSize(model []byte) (found bool, declared int64) {
	walkFields(model, func(num protowire.Number, typ protowire.Type, v, _ []byte) error {
		if num == 7 && typ == protowire.BytesType {
			walkFields(v, func(num protowire.Number, typ protowire.Type, v, _ []byte) error {
				if num == 5 && typ == protowire.BytesType {
					loc, _, length, _ := externalOf(v)
					found = found || loc != ""
					if loc != "" && length > 0 {
						// Capped past the limit: a length near 2^63
						// must not wrap the sum below it.
						declared = min(declared+min(length, MaxInline), MaxInline+1)
					}
				}
				return nil
			})
		}
		return nil
	})
	return found, declared
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
