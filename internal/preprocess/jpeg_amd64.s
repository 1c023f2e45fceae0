//go:build !purego

#include "textflag.h"

// func jpegIDCTStoreAVX2(blk *[64]int32, dst *byte, stride int, k *[17][8]int32)
//
// jpegIDCT then jpegStore, eight lanes at once: the rows transposed into
// lanes, idctRows' statements one instruction each, transposed back for
// idctCols', then packed to bytes. Every operation is the int32 one the
// Go does, wrapping alike, so the pixels are the same. k holds the
// constants (jpegIDCTK).
TEXT ·jpegIDCTStoreAVX2(SB), NOSPLIT, $0-32
	MOVQ blk+0(FP), SI
	MOVQ dst+8(FP), DI
	MOVQ stride+16(FP), DX
	MOVQ k+24(FP), R9
	VMOVDQU 0(SI), Y0
	VMOVDQU 32(SI), Y1
	VMOVDQU 64(SI), Y2
	VMOVDQU 96(SI), Y3
	VMOVDQU 128(SI), Y4
	VMOVDQU 160(SI), Y5
	VMOVDQU 192(SI), Y6
	VMOVDQU 224(SI), Y7

	// Rows, as idctRows: after the transpose, lane i of x[j] is row i's x[j].
	VUNPCKLPS Y1, Y0, Y8
	VUNPCKHPS Y1, Y0, Y9
	VUNPCKLPS Y3, Y2, Y1
	VUNPCKHPS Y3, Y2, Y0
	VUNPCKLPS Y5, Y4, Y3
	VUNPCKHPS Y5, Y4, Y2
	VUNPCKLPS Y7, Y6, Y5
	VUNPCKHPS Y7, Y6, Y4
	VSHUFPS $0x44, Y1, Y8, Y7
	VSHUFPS $0xEE, Y1, Y8, Y6
	VSHUFPS $0x44, Y0, Y9, Y1
	VSHUFPS $0xEE, Y0, Y9, Y8
	VSHUFPS $0x44, Y5, Y3, Y0
	VSHUFPS $0xEE, Y5, Y3, Y9
	VSHUFPS $0x44, Y4, Y2, Y5
	VSHUFPS $0xEE, Y4, Y2, Y3
	VPERM2F128 $0x20, Y0, Y7, Y4
	VPERM2F128 $0x31, Y0, Y7, Y2
	VPERM2F128 $0x20, Y9, Y6, Y0
	VPERM2F128 $0x31, Y9, Y6, Y7
	VPERM2F128 $0x20, Y5, Y1, Y9
	VPERM2F128 $0x31, Y5, Y1, Y6
	VPERM2F128 $0x20, Y3, Y8, Y5
	VPERM2F128 $0x31, Y3, Y8, Y1
	VPSLLD $17, Y4, Y4
	VPSLLD $17, Y2, Y2
	VPADDD Y2, Y4, Y3
	VPSUBD Y2, Y4, Y2
	VPADDD Y6, Y9, Y4
	VPMULLD 0(R9), Y4, Y4
	VPMULLD 32(R9), Y6, Y8
	VPADDD Y8, Y4, Y8
	VPMULLD 64(R9), Y9, Y9
	VPSUBD Y9, Y4, Y4
	VPADDD Y8, Y2, Y6
	VPSUBD Y8, Y2, Y8
	VPADDD Y4, Y3, Y2
	VPSUBD Y4, Y3, Y4
	VPSLLD $7, Y1, Y1
	VPSLLD $7, Y0, Y0
	VPADDD Y1, Y0, Y3
	VPSUBD Y1, Y0, Y1
	VPMULLD 96(R9), Y7, Y7
	VPMULLD 96(R9), Y5, Y5
	VPADDD Y5, Y3, Y0
	VPSUBD Y5, Y3, Y5
	VPADDD Y7, Y1, Y3
	VPSUBD Y7, Y1, Y7
	VPSRAD $2, Y3, Y3
	VPSRAD $2, Y0, Y0
	VPADDD Y0, Y3, Y1
	VPMULLD 128(R9), Y1, Y1
	VPMULLD 160(R9), Y0, Y9
	VPADDD Y9, Y1, Y9
	VPMULLD 192(R9), Y3, Y3
	VPSUBD Y3, Y1, Y1
	VPSRAD $2, Y5, Y5
	VPSRAD $2, Y7, Y7
	VPADDD Y7, Y5, Y0
	VPMULLD 224(R9), Y0, Y0
	VPMULLD 256(R9), Y7, Y3
	VPADDD Y3, Y0, Y3
	VPMULLD 288(R9), Y5, Y5
	VPSUBD Y5, Y0, Y0
	VPADDD Y1, Y2, Y7
	VPSUBD Y1, Y2, Y1
	VPADDD Y0, Y6, Y2
	VPSUBD Y0, Y6, Y0
	VPADDD Y3, Y8, Y6
	VPSUBD Y3, Y8, Y3
	VPADDD Y9, Y4, Y8
	VPSUBD Y9, Y4, Y9

	// Columns, as idctCols: transposed back, lane i of row j is column i's.
	VUNPCKLPS Y2, Y7, Y4
	VUNPCKHPS Y2, Y7, Y5
	VUNPCKLPS Y8, Y6, Y2
	VUNPCKHPS Y8, Y6, Y7
	VUNPCKLPS Y3, Y9, Y8
	VUNPCKHPS Y3, Y9, Y6
	VUNPCKLPS Y1, Y0, Y3
	VUNPCKHPS Y1, Y0, Y9
	VSHUFPS $0x44, Y2, Y4, Y1
	VSHUFPS $0xEE, Y2, Y4, Y0
	VSHUFPS $0x44, Y7, Y5, Y2
	VSHUFPS $0xEE, Y7, Y5, Y4
	VSHUFPS $0x44, Y3, Y8, Y7
	VSHUFPS $0xEE, Y3, Y8, Y5
	VSHUFPS $0x44, Y9, Y6, Y3
	VSHUFPS $0xEE, Y9, Y6, Y8
	VPERM2F128 $0x20, Y7, Y1, Y9
	VPERM2F128 $0x31, Y7, Y1, Y6
	VPERM2F128 $0x20, Y5, Y0, Y7
	VPERM2F128 $0x31, Y5, Y0, Y1
	VPERM2F128 $0x20, Y3, Y2, Y5
	VPERM2F128 $0x31, Y3, Y2, Y0
	VPERM2F128 $0x20, Y8, Y4, Y3
	VPERM2F128 $0x31, Y8, Y4, Y2
	VPADDD 448(R9), Y9, Y9
	VPADDD Y6, Y9, Y8
	VPSUBD Y6, Y9, Y6
	VPSRAD $2, Y8, Y8
	VPSRAD $2, Y6, Y6
	VPSRAD $13, Y5, Y5
	VPSRAD $13, Y0, Y0
	VPADDD Y0, Y5, Y9
	VPMULLD 320(R9), Y9, Y9
	VPMULLD 352(R9), Y0, Y4
	VPADDD Y4, Y9, Y4
	VPMULLD 384(R9), Y5, Y5
	VPSUBD Y5, Y9, Y9
	VPADDD Y4, Y6, Y0
	VPSUBD Y4, Y6, Y4
	VPADDD Y9, Y8, Y6
	VPSUBD Y9, Y8, Y9
	VPADDD Y2, Y7, Y8
	VPSUBD Y2, Y7, Y2
	VPSRAD $13, Y3, Y3
	VPMULLD 416(R9), Y3, Y3
	VPSRAD $13, Y1, Y1
	VPMULLD 416(R9), Y1, Y1
	VPADDD Y3, Y8, Y7
	VPSUBD Y3, Y8, Y3
	VPADDD Y1, Y2, Y8
	VPSUBD Y1, Y2, Y1
	VPSRAD $14, Y8, Y8
	VPSRAD $14, Y7, Y7
	VPADDD Y7, Y8, Y2
	VPMULLD 128(R9), Y2, Y2
	VPMULLD 160(R9), Y7, Y5
	VPADDD Y5, Y2, Y5
	VPMULLD 192(R9), Y8, Y8
	VPSUBD Y8, Y2, Y2
	VPSRAD $14, Y3, Y3
	VPSRAD $14, Y1, Y1
	VPADDD Y1, Y3, Y7
	VPMULLD 224(R9), Y7, Y7
	VPMULLD 256(R9), Y1, Y8
	VPADDD Y8, Y7, Y8
	VPMULLD 288(R9), Y3, Y3
	VPSUBD Y3, Y7, Y7
	VPADDD Y2, Y6, Y1
	VPSUBD Y2, Y6, Y2
	VPADDD Y7, Y0, Y6
	VPSUBD Y7, Y0, Y7
	VPADDD Y8, Y4, Y0
	VPSUBD Y8, Y4, Y8
	VPADDD Y5, Y9, Y4
	VPSUBD Y5, Y9, Y5

	// Level shift, then the packs' signed and unsigned saturation clamp
	// to [0, 255] as reconstructBlock does; row x_j is output row j.
	VPSRAD $18, Y1, Y1
	VPADDD 480(R9), Y1, Y1
	VPSRAD $18, Y6, Y6
	VPADDD 480(R9), Y6, Y6
	VPSRAD $18, Y0, Y0
	VPADDD 480(R9), Y0, Y0
	VPSRAD $18, Y4, Y4
	VPADDD 480(R9), Y4, Y4
	VPSRAD $18, Y5, Y5
	VPADDD 480(R9), Y5, Y5
	VPSRAD $18, Y8, Y8
	VPADDD 480(R9), Y8, Y8
	VPSRAD $18, Y7, Y7
	VPADDD 480(R9), Y7, Y7
	VPSRAD $18, Y2, Y2
	VPADDD 480(R9), Y2, Y2
	VPACKSSDW Y6, Y1, Y1
	VPACKSSDW Y4, Y0, Y0
	VPACKSSDW Y8, Y5, Y5
	VPACKSSDW Y2, Y7, Y7
	VPACKUSWB Y0, Y1, Y1
	VPACKUSWB Y7, Y5, Y5
	VMOVDQU 512(R9), Y15
	VPERMD Y1, Y15, Y1
	VPERMD Y5, Y15, Y5
	LEAQ (DX)(DX*2), R10 // 3·stride
	VMOVQ X1, (DI)
	VPEXTRQ $1, X1, (DI)(DX*1)
	VEXTRACTI128 $1, Y1, X1
	VMOVQ X1, (DI)(DX*2)
	VPEXTRQ $1, X1, (DI)(R10*1)
	LEAQ (DI)(DX*4), DI
	VMOVQ X5, (DI)
	VPEXTRQ $1, X5, (DI)(DX*1)
	VEXTRACTI128 $1, Y5, X5
	VMOVQ X5, (DI)(DX*2)
	VPEXTRQ $1, X5, (DI)(R10*1)
	VZEROUPPER
	RET

// func acRunBMI2(blk *[64]int32, qz *[64]uint64, fast *jpegACLUT, data *byte, limit, k int, acc uint64, n uint, pos int) (kk int, acc2 uint64, n2 uint, pos2 int)
//
// acRun's loop, the same steps, with its state in registers throughout:
// the compiler's acRun spilled and reloaded it every coefficient. BMI2's
// SHLX and SHRX shift by any register, leaving CX free. The data is read
// only below limit+8.
TEXT ·acRunBMI2(SB), NOSPLIT, $0-104
	MOVQ blk+0(FP), DI
	MOVQ qz+8(FP), SI
	MOVQ fast+16(FP), R8
	MOVQ data+24(FP), R9
	MOVQ limit+32(FP), R10
	MOVQ k+40(FP), AX
	MOVQ acc+48(FP), BX
	MOVQ n+56(FP), DX
	MOVQ pos+64(FP), R11
	CMPQ DX, $63
	JA   first // no room for a load: acRun's n < 64

loop:
	CMPQ AX, $63
	JGT  done
	CMPQ R11, R10
	JGT  near
	MOVQ (R9)(R11*1), CX
	BSWAPQ CX
	SHRXQ DX, CX, CX
	ORQ  CX, BX
	MOVL $63, CX
	SUBL DX, CX
	SHRL $3, CX
	ADDQ CX, R11
	ORQ  $56, DX

look:
	MOVQ BX, CX
	SHRQ $53, CX
	MOVQ (R8)(CX*8), R12 // e
	TESTQ R12, R12
	JZ   done
	MOVQ R12, R13
	SHRQ $8, R13
	MOVBQZX R13, R13
	ADDQ AX, R13 // k2, the last coefficient's index
	CMPQ R13, $63
	JGT  done
	MOVQ R12, CX
	SHRQ $16, CX
	MOVBQZX CX, CX
	ADDQ AX, CX // k1, the first's

	// The second coefficient, then the first, as acRun stores them.
	ANDQ $63, CX // as acRun's mask; qz's indexes are jpegZig's
	MOVQ (SI)(R13*8), R14
	MOVQ R14, R15
	SHRQ $32, R15
	MOVQ R12, AX
	SARQ $48, AX
	IMULL R14, AX
	MOVL AX, (DI)(R15*4)
	MOVQ (SI)(CX*8), R14
	MOVQ R14, R15
	SHRQ $32, R15
	MOVQ R12, AX
	SHLQ $16, AX
	SARQ $48, AX
	IMULL R14, AX
	MOVL AX, (DI)(R15*4)

	LEAQ 1(R13), AX
	MOVL R12, CX
	ANDL $63, CX
	SHLXQ CX, BX, BX
	SUBQ CX, DX
	JMP  loop

near:
	CMPQ DX, $32
	JAE  look
	JMP  done

first:
	CMPQ AX, $63
	JLE  look

done:
	MOVQ AX, kk+72(FP)
	MOVQ BX, acc2+80(FP)
	MOVQ DX, n2+88(FP)
	MOVQ R11, pos2+96(FP)
	RET
