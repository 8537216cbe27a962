/**
 * The build's stages. The runner orders them by what each needs and produces: after
 * configure, initramfs runs beside partition → encrypt → nbde; bootloader starts once the
 * initramfs and the disk exist; export comes last.
 */
import type { AnyStage } from '../pipeline/stage.js';
import { bootloaderStage } from './bootloader.js';
import { bootstrapStage } from './bootstrap.js';
import { configureStage } from './configure.js';
import { encryptStage } from './encrypt.js';
import { exportStage } from './export.js';
import { initramfsStage } from './initramfs.js';
import { nbdeStage } from './nbde.js';
import { partitionStage } from './partition.js';

export const STAGES: readonly AnyStage[] = [bootstrapStage, configureStage, initramfsStage, partitionStage, encryptStage, nbdeStage, bootloaderStage, exportStage];
