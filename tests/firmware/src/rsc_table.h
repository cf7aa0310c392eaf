/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The remoteproc resource table ABI (Linux include/linux/remoteproc.h).
 *
 * Every structure is packed and little-endian. As in OpenAMP, each entry
 * structure starts with its `type` word (the kernel's struct fw_rsc_hdr), so
 * that an entry is one member of the firmware's table.
 */
#ifndef RSC_TABLE_H
#define RSC_TABLE_H

#include <stdint.h>

#define RSC_CARVEOUT	0
#define RSC_DEVMEM	1
#define RSC_TRACE	2
#define RSC_VDEV	3

#define FW_RSC_ADDR_ANY	0xFFFFFFFFu

#define VIRTIO_ID_RPMSG		7
#define VIRTIO_RPMSG_F_NS	0	/* the remote announces its channels */

#define RSC_PACKED __attribute__((packed))

/* Table header; followed by `num` u32 entry offsets from the table start. */
struct resource_table_hdr {
	uint32_t ver;			/* must be 1 */
	uint32_t num;
	uint32_t reserved[2];		/* must be 0 */
} RSC_PACKED;

struct fw_rsc_devmem {
	uint32_t type;			/* RSC_DEVMEM */
	uint32_t da;
	uint32_t pa;
	uint32_t len;
	uint32_t flags;
	uint32_t reserved;		/* must be 0 */
	char name[32];
} RSC_PACKED;

struct fw_rsc_trace {
	uint32_t type;			/* RSC_TRACE */
	uint32_t da;			/* where the firmware writes its log */
	uint32_t len;
	uint32_t reserved;		/* must be 0 */
	char name[32];			/* debugfs file name, e.g. "trace0" */
} RSC_PACKED;

struct fw_rsc_vdev_vring {
	uint32_t da;
	uint32_t align;
	uint32_t num;			/* number of buffers */
	uint32_t notifyid;
	uint32_t pa;			/* written by the host */
} RSC_PACKED;

/* Followed by num_of_vrings vrings, then config_len bytes of config space. */
struct fw_rsc_vdev {
	uint32_t type;			/* RSC_VDEV */
	uint32_t id;			/* virtio device id */
	uint32_t notifyid;
	uint32_t dfeatures;
	uint32_t gfeatures;		/* written by the host */
	uint32_t config_len;
	uint8_t status;			/* written by the host */
	uint8_t num_of_vrings;
	uint8_t reserved[2];		/* must be 0 */
} RSC_PACKED;

/* rpmsg virtio config space (OpenAMP struct fw_rsc_config): buffer sizes. */
struct rpmsg_vdev_config {
	uint32_t h2r_buf_size;		/* host to remote */
	uint32_t r2h_buf_size;		/* remote to host */
	uint32_t reserved[14];
} RSC_PACKED;

/* Sizes fixed by the ABI (entry body sizes plus the 4-byte type). */
_Static_assert(sizeof(struct resource_table_hdr) == 16, "header size");
_Static_assert(sizeof(struct fw_rsc_devmem) == 4 + 52, "devmem size");
_Static_assert(sizeof(struct fw_rsc_trace) == 4 + 44, "trace size");
_Static_assert(sizeof(struct fw_rsc_vdev) == 4 + 24, "vdev size");
_Static_assert(sizeof(struct fw_rsc_vdev_vring) == 20, "vring size");

#endif /* RSC_TABLE_H */
