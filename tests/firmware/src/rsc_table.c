/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The resource table: what this firmware asks of the Linux host. The kernel
 * finds it by the section name `.resource_table`; the linker script places it
 * in a loaded segment, because the host writes back into it (vring addresses,
 * negotiated features) before the core starts.
 *
 * Entries: an rpmsg virtio device with two vrings (cores with IPCC mailboxes)
 * and the trace buffer "trace0".
 *
 * Knobs used by the broken test images only:
 *   RSC_TABLE_VERSION=N   a `ver` other than 1
 *   RSC_BAD_OFFSET        the trace entry's offset points past the table end
 *   RSC_WITH_DEVMEM       an extra RSC_DEVMEM entry (fails without an IOMMU)
 */
#include <stddef.h>

#include "board.h"
#include "rsc_table.h"

#ifndef RSC_TABLE_VERSION
#define RSC_TABLE_VERSION	1
#endif

#define VRING_ALIGN	16
#define VRING_NUM_BUFS	16
#define RPMSG_BUF_SIZE	512

enum {
#if HAVE_VDEV
	ENTRY_VDEV,
#endif
	ENTRY_TRACE,
#ifdef RSC_WITH_DEVMEM
	ENTRY_DEVMEM,
#endif
	NUM_ENTRIES
};

struct firmware_resource_table {
	struct resource_table_hdr hdr;
	uint32_t offset[NUM_ENTRIES];
#if HAVE_VDEV
	struct fw_rsc_vdev vdev;
	struct fw_rsc_vdev_vring vring[2];
	struct rpmsg_vdev_config vdev_config;
#endif
	struct fw_rsc_trace trace;
#ifdef RSC_WITH_DEVMEM
	struct fw_rsc_devmem devmem;
#endif
} RSC_PACKED;

#ifdef RSC_BAD_OFFSET
#define TRACE_OFFSET	(sizeof(struct firmware_resource_table) + 256)
#else
#define TRACE_OFFSET	offsetof(struct firmware_resource_table, trace)
#endif

__attribute__((section(".resource_table"), used, aligned(8)))
struct firmware_resource_table resource_table = {
	.hdr = {
		.ver = RSC_TABLE_VERSION,
		.num = NUM_ENTRIES,
	},
	.offset = {
#if HAVE_VDEV
		[ENTRY_VDEV] = offsetof(struct firmware_resource_table, vdev),
#endif
		[ENTRY_TRACE] = TRACE_OFFSET,
#ifdef RSC_WITH_DEVMEM
		[ENTRY_DEVMEM] = offsetof(struct firmware_resource_table, devmem),
#endif
	},
#if HAVE_VDEV
	.vdev = {
		.type = RSC_VDEV,
		.id = VIRTIO_ID_RPMSG,
		.notifyid = 0,
		.dfeatures = 1u << VIRTIO_RPMSG_F_NS,
		.config_len = sizeof(struct rpmsg_vdev_config),
		.num_of_vrings = 2,
	},
	.vring = {
		{ .da = VRING0_DA, .align = VRING_ALIGN, .num = VRING_NUM_BUFS, .notifyid = 0 },
		{ .da = VRING1_DA, .align = VRING_ALIGN, .num = VRING_NUM_BUFS, .notifyid = 1 },
	},
	.vdev_config = {
		.h2r_buf_size = RPMSG_BUF_SIZE,
		.r2h_buf_size = RPMSG_BUF_SIZE,
	},
#endif
	.trace = {
		.type = RSC_TRACE,
		.da = (uint32_t)trace_buf,
		.len = TRACE_BUF_SIZE,
		.name = "trace0",
	},
#ifdef RSC_WITH_DEVMEM
	.devmem = {	/* the IPCC registers: needs an IOMMU the STM32 does not have */
		.type = RSC_DEVMEM,
		.da = 0x4C001000u,
		.pa = 0x4C001000u,
		.len = 0x1000,
		.name = "ipcc",
	},
#endif
};
