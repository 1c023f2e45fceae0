//go:build !purego

#include "textflag.h"

// func addScaledRowAVX(dst, src *float32, n int, w float32)
//
// Sixteen samples a step, then one at a time.
TEXT ·addScaledRowAVX(SB), NOSPLIT, $0-28
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	VBROADCASTSS w+24(FP), Y0
	XORQ AX, AX
	MOVQ CX, BX
	ANDQ $~15, BX

wide:
	CMPQ AX, BX
	JGE  tail
	VMULPS  (SI)(AX*4), Y0, Y1
	VMULPS  32(SI)(AX*4), Y0, Y2
	VADDPS  (DI)(AX*4), Y1, Y1
	VADDPS  32(DI)(AX*4), Y2, Y2
	VMOVUPS Y1, (DI)(AX*4)
	VMOVUPS Y2, 32(DI)(AX*4)
	ADDQ $16, AX
	JMP  wide

tail:
	CMPQ AX, CX
	JGE  done
	VMULSS (SI)(AX*4), X0, X1
	VADDSS (DI)(AX*4), X1, X1
	VMOVSS X1, (DI)(AX*4)
	INCQ AX
	JMP  tail

done:
	VZEROUPPER
	RET

// func bytesToFloatsAVX2(dst *float32, src *byte, n int)
//
// n is a multiple of 16: two groups of eight bytes widened to 32-bit
// integers, then converted (exactly: every byte is a float32).
TEXT ·bytesToFloatsAVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	XORQ AX, AX

loop:
	CMPQ      AX, CX
	JGE       done
	VPMOVZXBD (SI)(AX*1), Y0
	VPMOVZXBD 8(SI)(AX*1), Y1
	VCVTDQ2PS Y0, Y0
	VCVTDQ2PS Y1, Y1
	VMOVUPS   Y0, (DI)(AX*4)
	VMOVUPS   Y1, 32(DI)(AX*4)
	ADDQ      $16, AX
	JMP       loop

done:
	VZEROUPPER
	RET

// Y·0x10101: Y in the top two bytes, as color.YCbCrToRGB scales it
DATA yccY<>+0(SB)/8, $0x0001010100010101
DATA yccY<>+8(SB)/8, $0x0001010100010101
DATA yccY<>+16(SB)/8, $0x0001010100010101
DATA yccY<>+24(SB)/8, $0x0001010100010101
GLOBL yccY<>(SB), RODATA|NOPTR, $32

// the chroma offset
DATA ycc128<>+0(SB)/8, $0x0000008000000080
DATA ycc128<>+8(SB)/8, $0x0000008000000080
DATA ycc128<>+16(SB)/8, $0x0000008000000080
DATA ycc128<>+24(SB)/8, $0x0000008000000080
GLOBL ycc128<>(SB), RODATA|NOPTR, $32

// 1.40200 · 2^16
DATA yccCrR<>+0(SB)/8, $0x000166e9000166e9
DATA yccCrR<>+8(SB)/8, $0x000166e9000166e9
DATA yccCrR<>+16(SB)/8, $0x000166e9000166e9
DATA yccCrR<>+24(SB)/8, $0x000166e9000166e9
GLOBL yccCrR<>(SB), RODATA|NOPTR, $32

// 0.34414 · 2^16
DATA yccCbG<>+0(SB)/8, $0x0000581a0000581a
DATA yccCbG<>+8(SB)/8, $0x0000581a0000581a
DATA yccCbG<>+16(SB)/8, $0x0000581a0000581a
DATA yccCbG<>+24(SB)/8, $0x0000581a0000581a
GLOBL yccCbG<>(SB), RODATA|NOPTR, $32

// 0.71414 · 2^16
DATA yccCrG<>+0(SB)/8, $0x0000b6d20000b6d2
DATA yccCrG<>+8(SB)/8, $0x0000b6d20000b6d2
DATA yccCrG<>+16(SB)/8, $0x0000b6d20000b6d2
DATA yccCrG<>+24(SB)/8, $0x0000b6d20000b6d2
GLOBL yccCrG<>(SB), RODATA|NOPTR, $32

// 1.77200 · 2^16
DATA yccCbB<>+0(SB)/8, $0x0001c5a20001c5a2
DATA yccCbB<>+8(SB)/8, $0x0001c5a20001c5a2
DATA yccCbB<>+16(SB)/8, $0x0001c5a20001c5a2
DATA yccCbB<>+24(SB)/8, $0x0001c5a20001c5a2
GLOBL yccCbB<>(SB), RODATA|NOPTR, $32

// the clamp
DATA ycc255<>+0(SB)/8, $0x000000ff000000ff
DATA ycc255<>+8(SB)/8, $0x000000ff000000ff
DATA ycc255<>+16(SB)/8, $0x000000ff000000ff
DATA ycc255<>+24(SB)/8, $0x000000ff000000ff
GLOBL ycc255<>(SB), RODATA|NOPTR, $32

// each of four chroma samples for two pixels
DATA yccHalf<>+0(SB)/8, $0x0000000000000000
DATA yccHalf<>+8(SB)/8, $0x0000000100000001
DATA yccHalf<>+16(SB)/8, $0x0000000200000002
DATA yccHalf<>+24(SB)/8, $0x0000000300000003
GLOBL yccHalf<>(SB), RODATA|NOPTR, $32

// pixels of the output's first eight floats (r g b r g b r g)
DATA yccRGB0<>+0(SB)/8, $0x0000000000000000
DATA yccRGB0<>+8(SB)/8, $0x0000000100000000
DATA yccRGB0<>+16(SB)/8, $0x0000000100000001
DATA yccRGB0<>+24(SB)/8, $0x0000000200000002
GLOBL yccRGB0<>(SB), RODATA|NOPTR, $32

// … of the next eight (b r g b r g b r)
DATA yccRGB1<>+0(SB)/8, $0x0000000300000002
DATA yccRGB1<>+8(SB)/8, $0x0000000300000003
DATA yccRGB1<>+16(SB)/8, $0x0000000400000004
DATA yccRGB1<>+24(SB)/8, $0x0000000500000004
GLOBL yccRGB1<>(SB), RODATA|NOPTR, $32

// … and of the last (g b r g b r g b)
DATA yccRGB2<>+0(SB)/8, $0x0000000500000005
DATA yccRGB2<>+8(SB)/8, $0x0000000600000006
DATA yccRGB2<>+16(SB)/8, $0x0000000700000006
DATA yccRGB2<>+24(SB)/8, $0x0000000700000007
GLOBL yccRGB2<>(SB), RODATA|NOPTR, $32

// func ycbcrRowAVX2(dst *float32, y, cb, cr *byte, n int, half bool)
//
// color.YCbCrToRGB for n pixels (a multiple of 8), eight a step, in its
// own 16.16 integer arithmetic; each channel clamped as it clamps, then
// made a float and the three interleaved. With half, two pixels share
// each chroma sample.
TEXT ·ycbcrRowAVX2(SB), NOSPLIT, $0-41
	MOVQ dst+0(FP), DI
	MOVQ y+8(FP), SI
	MOVQ cb+16(FP), DX
	MOVQ cr+24(FP), R8
	MOVQ n+32(FP), CX
	MOVBQZX half+40(FP), BX
	VMOVDQU yccHalf<>(SB), Y15
	VMOVDQU yccRGB0<>(SB), Y12
	VMOVDQU yccRGB1<>(SB), Y13
	VMOVDQU yccRGB2<>(SB), Y14
	VPXOR   Y11, Y11, Y11
	XORQ    AX, AX

loop:
	CMPQ AX, CX
	JGE  done
	VPMOVZXBD (SI)(AX*1), Y0
	VPMULLD   yccY<>(SB), Y0, Y0
	TESTQ     BX, BX
	JNZ       halfChroma
	VPMOVZXBD (DX)(AX*1), Y1
	VPMOVZXBD (R8)(AX*1), Y2
	JMP       chroma

halfChroma:
	MOVQ      AX, R9
	SHRQ      $1, R9
	VMOVD     (DX)(R9*1), X1
	VMOVD     (R8)(R9*1), X2
	VPMOVZXBD X1, Y1
	VPMOVZXBD X2, Y2
	VPERMD    Y1, Y15, Y1
	VPERMD    Y2, Y15, Y2

chroma:
	VPSUBD  ycc128<>(SB), Y1, Y1
	VPSUBD  ycc128<>(SB), Y2, Y2
	VPMULLD yccCrR<>(SB), Y2, Y3
	VPADDD  Y0, Y3, Y3 // r
	VPMULLD yccCbG<>(SB), Y1, Y4
	VPSUBD  Y4, Y0, Y4
	VPMULLD yccCrG<>(SB), Y2, Y5
	VPSUBD  Y5, Y4, Y4 // g
	VPMULLD yccCbB<>(SB), Y1, Y5
	VPADDD  Y0, Y5, Y5 // b

	// >>16, clamped to [0, 255]: what YCbCrToRGB's test of the top byte
	// and its ^(x>>31) make of every int32.
	VPSRAD    $16, Y3, Y3
	VPSRAD    $16, Y4, Y4
	VPSRAD    $16, Y5, Y5
	VPMAXSD   Y11, Y3, Y3
	VPMAXSD   Y11, Y4, Y4
	VPMAXSD   Y11, Y5, Y5
	VPMINSD   ycc255<>(SB), Y3, Y3
	VPMINSD   ycc255<>(SB), Y4, Y4
	VPMINSD   ycc255<>(SB), Y5, Y5
	VCVTDQ2PS Y3, Y3
	VCVTDQ2PS Y4, Y4
	VCVTDQ2PS Y5, Y5

	// Interleave: each output vector takes every lane from the channel
	// its position holds, picked by pixel.
	VPERMPS  Y3, Y12, Y6
	VPERMPS  Y4, Y12, Y7
	VPERMPS  Y5, Y12, Y8
	VBLENDPS $0x92, Y7, Y6, Y6
	VBLENDPS $0x24, Y8, Y6, Y6
	VMOVUPS  Y6, (DI)
	VPERMPS  Y3, Y13, Y6
	VPERMPS  Y4, Y13, Y7
	VPERMPS  Y5, Y13, Y8
	VBLENDPS $0x24, Y7, Y6, Y6
	VBLENDPS $0x49, Y8, Y6, Y6
	VMOVUPS  Y6, 32(DI)
	VPERMPS  Y3, Y14, Y6
	VPERMPS  Y4, Y14, Y7
	VPERMPS  Y5, Y14, Y8
	VBLENDPS $0x49, Y7, Y6, Y6
	VBLENDPS $0x92, Y8, Y6, Y6
	VMOVUPS  Y6, 64(DI)

	ADDQ $96, DI
	ADDQ $8, AX
	JMP  loop

done:
	VZEROUPPER
	RET

// func resampleRGBAVX(o0, o1, o2 *float32, step, w, n int, at *int, in, taps *float32, a, off *[4]float32)
//
// For each of w output pixels: the sum over its n taps of weight times the
// source pixel's r, g, b (four floats loaded, the fourth unused), summed
// from the first tap in order, a multiply then an add, as resampleRow's
// loops do; then times a plus off, as fillGeneral's are; the three
// channels stored at o0, o1 and o2, which advance step bytes a pixel.
// at[x] is the pixel's first source float; taps holds n weights a pixel.
TEXT ·resampleRGBAVX(SB), NOSPLIT, $0-88
	MOVQ o0+0(FP), DI
	MOVQ o1+8(FP), SI
	MOVQ o2+16(FP), R8
	MOVQ step+24(FP), R9
	MOVQ w+32(FP), CX
	MOVQ n+40(FP), R10
	MOVQ at+48(FP), R11
	MOVQ in+56(FP), R12
	MOVQ taps+64(FP), R13
	MOVQ a+72(FP), AX
	VMOVUPS (AX), X6
	MOVQ off+80(FP), AX
	VMOVUPS (AX), X7
	TESTQ CX, CX
	JZ   done

pixel:
	MOVQ (R11), AX
	LEAQ (R12)(AX*4), BX      // the first tap's pixel
	VBROADCASTSS (R13), X1
	VMULPS (BX), X1, X0
	MOVQ $1, DX

tap:
	CMPQ DX, R10
	JGE  store
	ADDQ $12, BX
	VBROADCASTSS (R13)(DX*4), X1
	VMULPS (BX), X1, X1
	VADDPS X1, X0, X0
	INCQ DX
	JMP  tap

store:
	VMULPS X6, X0, X0
	VADDPS X7, X0, X0
	VMOVSS X0, (DI)
	VEXTRACTPS $1, X0, (SI)
	VEXTRACTPS $2, X0, (R8)
	ADDQ R9, DI
	ADDQ R9, SI
	ADDQ R9, R8
	LEAQ (R13)(R10*4), R13
	ADDQ $8, R11
	DECQ CX
	JNZ  pixel

done:
	RET

// func clampRound255AVX(v *float32, n int)
//
// n is a multiple of 8.
TEXT ·clampRound255AVX(SB), NOSPLIT, $0-16
	MOVQ v+0(FP), DI
	MOVQ n+8(FP), CX
	VXORPS       Y1, Y1, Y1
	VBROADCASTSS ·f255(SB), Y2
	XORQ AX, AX

loop:
	CMPQ AX, CX
	JGE  done
	VMOVUPS   (DI)(AX*4), Y0
	VMAXPS    Y1, Y0, Y0
	VMINPS    Y2, Y0, Y0
	VROUNDPS  $0, Y0, Y0
	VMOVUPS   Y0, (DI)(AX*4)
	ADDQ $8, AX
	JMP  loop

done:
	VZEROUPPER
	RET

DATA ·f255+0(SB)/4, $0x437f0000
GLOBL ·f255(SB), RODATA|NOPTR, $4
